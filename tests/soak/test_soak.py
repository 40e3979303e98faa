"""The short form of the load and soak run (bench/soak.py): 200 connections for 15 s of mixed
traffic with Redis killed and restarted in the middle, then every job drained and the proxy's
fds and RSS compared with their baseline. The long form (1,000 connections, 60 s) is run by
hand: docs/reliability.md."""

from __future__ import annotations

import pytest

from bench.soak import DEFAULT_MIX, SoakSettings, problems, run_soak


@pytest.mark.soak
@pytest.mark.timeout(600)
def test_short_soak_with_a_redis_restart_loses_nothing_and_leaks_nothing() -> None:
    report = run_soak(SoakSettings(connections=200, duration_s=15, warmup_s=3))
    summary = report.markdown()
    assert problems(report) == [], summary
    # The run did what it says: every kind of request was served, Redis went away and came
    # back, jobs were accepted on both sides of the outage, and the load held 200 connections.
    assert set(report.ok_by_kind) == set(DEFAULT_MIX), summary
    assert report.redis_restarted, summary
    assert report.jobs_submitted > 0 and report.jobs_completed == report.jobs_submitted, summary
    assert report.peak is not None and report.peak.fds["client"] >= 200 * 0.9, summary
