"""Reloads while clients keep sending: no request fails (bench/signals.py, briefly)."""

from __future__ import annotations

import pytest

from bench.signals import run_signals


@pytest.mark.timeout(120)
def test_reloads_under_load_fail_no_request() -> None:
    out = run_signals(mode="reload", duration_s=3.0, reloads=3, concurrency=8)
    report = out.report()
    assert report["failed"] == 0, report
    assert report["reloads"] == report["applied"] == 3
    assert report["ok"] == report["sent"] > 0
