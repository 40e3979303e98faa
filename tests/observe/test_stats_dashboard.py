"""GET /stats and GET /dashboard: the numbers, the admin key, and the page in real Chromium."""

from __future__ import annotations

import base64
import html
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bench.fake_upstream import Scripted
from proxy.keys import OBSERVER
from tests.conftest import KEY_A, Fake, ProxyFactory
from tests.support import http

CHROMIUM = "/usr/bin/chromium"
ADMIN_KEY = "sk-admin-dashboard-1"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def some_traffic(base: str, fake: Fake) -> str:
    """3 misses, 4 hits and one upstream 500; the 500's request id."""
    for i in range(7):
        body = {**CHAT, "messages": [{"role": "user", "content": f"q{i % 3}"}]}
        assert http.post(f"{base}/chat/completions", body).status == 200
    fake.state.script.append(Scripted(500, {"error": {"message": "boom", "code": "kaboom"}}))
    failed = http.post(f"{base}/chat/completions", {**CHAT, "user": "x", "n": 2})
    assert failed.status == 500
    return failed.headers["x-request-id"]


def test_stats_gives_the_numbers(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    failed_id = some_traffic(proxy.base_url, fake)
    stats = http.get(f"{proxy.url}/stats").json()
    assert stats["requests"]["total"] == 8 and stats["requests"]["errors_5xx"] == 1
    assert stats["requests"]["by_status"] == {"200": 7, "500": 1}
    assert stats["requests"]["by_route"] == {"/v1/chat/completions": 8}
    assert stats["cache"]["hits"] == 4 and stats["cache"]["cacheable"] == 8
    assert stats["cache"]["hit_ratio"] == 0.5
    assert stats["saved"] == {"cache": 4, "dedup": 0, "batching": 0}
    latency = stats["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] and latency["upstream_p50"] > 0
    assert stats["upstream_errors"] == {"http_5xx": 1}
    [error] = stats["recent_errors"]
    assert (error["request_id"], error["status"], error["error"]) == (failed_id, 500, "kaboom")
    assert stats["requests"]["per_second"] is None  # one sample: no rate yet
    assert http.get(f"{proxy.url}/stats").json()["requests"]["total"] == 8  # not counted itself


@pytest.mark.parametrize("path", ["/stats", "/dashboard"])
def test_admin_key_needed_in_keys_mode(make_proxy: ProxyFactory, path: str) -> None:
    proxy = make_proxy(
        {
            "auth": {
                "mode": "keys",
                "keys": [{"name": "a", "key": KEY_A}],
                "admin_keys": [{"name": "ops", "key": ADMIN_KEY}],
            }
        }
    )
    url = proxy.url + path

    def basic(password: str) -> dict[str, str]:
        token = base64.b64encode(f"ops:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    missing = http.get(url)
    assert missing.status == 401 and missing.headers["www-authenticate"].startswith("Basic ")
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert http.get(url, {"Authorization": f"Bearer {KEY_A}"}).status == 403  # a client key
    assert http.get(url, basic(KEY_A)).status == 401  # a browser asks again
    assert http.get(url, {"Authorization": "Basic !!notbase64"}).status == 401
    assert http.get(url, {"Authorization": f"Bearer {ADMIN_KEY}"}).status == 200
    assert http.get(url, basic(ADMIN_KEY)).status == 200


def test_the_dashboard_is_self_contained(make_proxy: ProxyFactory) -> None:
    page = http.get(f"{make_proxy().url}/dashboard")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    text = page.body.decode()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing from elsewhere
    assert "setTimeout(poll, POLL_MS)" in text and "const POLL_MS = 2000" in text


def chromium(*args: str) -> str:
    """Headless Chromium with a profile of its own and no network beyond loopback."""
    assert Path(CHROMIUM).exists(), "chromium is needed (./scripts/test installs it)"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=45,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def shown(dom: str) -> dict[str, str]:
    """The dashboard's tiles: id -> the text shown."""
    tiles = re.findall(r'<div class="v" id="([a-z_0-9]+)"[^>]*>([^<]*)</div>', dom)
    return {name: html.unescape(text) for name, text in tiles}


def test_the_page_in_chromium_shows_what_stats_gives(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    failed_id = some_traffic(proxy.base_url, fake)
    stats: dict[str, Any] = http.get(f"{proxy.url}/stats").json()
    # The page fetches /stats at once and again 2 s later (virtual time: no real wait).
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", f"{proxy.url}/dashboard")
    tiles = shown(dom)
    assert tiles["requests_total"] == str(stats["requests"]["total"]) == "8"
    assert tiles["errors_5xx"] == "1"
    assert tiles["hit_ratio"] == f"{stats['cache']['hit_ratio'] * 100:.1f}%" == "50.0%"
    assert tiles["saved_cache"] == str(stats["saved"]["cache"]) == "4"
    assert tiles["saved_dedup"] == tiles["saved_batching"] == "0"
    assert tiles["latency_p50"] == f"{stats['latency_ms']['p50']:.1f} ms"
    assert tiles["latency_p99"] == f"{stats['latency_ms']['p99']:.1f} ms"
    assert tiles["upstream_p50"] == f"{stats['latency_ms']['upstream_p50']:.1f} ms"
    assert tiles["jobs_queued"] == "0" and tiles["in_flight"] == "0"
    assert failed_id in dom and "kaboom" in dom  # the recent errors table
    assert dom.count("<rect") >= 4  # the bar charts were drawn
    assert "updated " in dom and 'class="bad"' not in dom


def test_screenshot(make_proxy: ProxyFactory, fake: Fake, tmp_path: Path) -> None:
    """The page renders to an image (how docs/dashboard.png is made)."""
    proxy = make_proxy()
    some_traffic(proxy.base_url, fake)
    shot = tmp_path / "dashboard.png"
    chromium(
        "--virtual-time-budget=3000",
        "--window-size=1280,900",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        f"{proxy.url}/dashboard",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_rates_and_recent_latency_over_the_window(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    stats = proxy.app[OBSERVER].stats
    now = [100.0]
    proxy.live.bg.call(lambda: setattr(stats, "clock", lambda: now[0]))
    some_traffic(proxy.base_url, fake)
    first = http.get(f"{proxy.url}/stats").json()
    assert first["requests"]["per_second"] is None and first["recent_latency_ms"]["p50"] is None
    now[0] += 10.0
    for i in range(5):
        http.post(f"{proxy.base_url}/chat/completions", {**CHAT, "user": f"u{i}"})  # hits
    second = http.get(f"{proxy.url}/stats").json()
    assert second["requests"]["per_second"] == 0.5  # 5 requests in 10 s
    assert second["requests"]["errors_per_second"] == 0.0
    recent = second["recent_latency_ms"]
    assert recent["p50"] is not None and recent["p50"] <= second["latency_ms"]["p99"]
