"""The hostile suite's figures, printed at the end of a pytest run that ran them."""

from __future__ import annotations

import pytest

from tests.hostile.test_isolation import ATTEMPTS, TALLY, isolation_figure


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY:
        return
    denied, tried = isolation_figure()
    configs = len({config for config, _, _ in TALLY})
    terminalreporter.write_line(
        f"isolation attempts denied / tried: {denied} / {tried} "
        f"({len(ATTEMPTS)} kinds of attempt, {configs} configurations)"
    )
