"""Benchmarks and the fake OpenAI-compatible upstream shared with the test suite.

- `bench.fake_upstream`: deterministic, fast fake upstream (`create_fake_upstream`, `STATE`).
- `bench.loadgen`: HTTP load generator (`run_load`).
- `bench.run`: runs a scenario direct and through the proxy and prints a comparison table.
"""
