"""SIGHUP: the config file is read again; new requests get it, requests in flight keep theirs."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
from pathlib import Path
from typing import Any

from tests.conftest import Fake
from tests.runtime.conftest import Start
from tests.runtime.procs import ProxyProcess, write_config
from tests.runtime.test_graceful_stop import Stream
from tests.support import http as raw
from tests.support.redis_server import free_port

KEY_OLD = "sk-proxy-old-0123456789"
KEY_NEW = "sk-proxy-new-9876543210"


def config(port: int, fake: Fake, **sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 20},
        "upstreams": [{"name": "fake", "base_url": fake.url}],
        "auth": {"mode": "keys", "keys": [{"name": "old", "key": KEY_OLD}]},
    }
    return {**base, **sections}


def chat(port: int, key: str, model: str = "gpt-4o", text: str = "hi") -> raw.Raw:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return raw.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        body,
        headers={"Authorization": f"Bearer {key}"},
    )


def keep_alive_chat(conn: http.client.HTTPConnection, key: str, text: str) -> int:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    response.read()
    return response.status


def test_reload_applies_a_good_file_without_dropping_anything(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    port = free_port()
    path = write_config(tmp_path / "c.yaml", config(port, fake))
    proc = start_proxy("--config", str(path))
    proc.wait_ready(port)
    assert chat(port, KEY_OLD).status == 200
    assert chat(port, KEY_NEW).status == 401

    # In flight across the reload: a stream held by the upstream, and a kept-alive connection.
    gate = asyncio.Event()
    fake.state.stream_gate = gate
    held = Stream(port, "held", key=KEY_OLD)
    assert held.response.status == 200
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    assert keep_alive_chat(conn, KEY_OLD, "before") == 200

    second = {
        "name": "second",
        "base_url": fake.url,
        "models": ["gpt-4o-mini"],
        "api_key": "sk-2nd",
    }
    new = config(
        port,
        fake,
        server={"host": "127.0.0.1", "port": port, "shutdown_timeout_s": 5},
        upstreams=[{"name": "fake", "base_url": fake.url}, second],
        routing={"default_upstream": "fake", "model_aliases": {"fast": "gpt-4o-mini"}},
        auth={"mode": "keys", "keys": [{"name": "new", "key": KEY_NEW}]},
    )
    write_config(path, new)
    proc.signal(signal.SIGHUP)
    proc.wait_log("config reloaded")
    assert proc.matches(
        "server.shutdown_timeout_s changed, which takes effect only after a restart"
    )

    # New requests, on a new or a kept-alive connection, get the new settings.
    assert chat(port, KEY_NEW).status == 200
    assert chat(port, KEY_OLD).status == 401
    assert keep_alive_chat(conn, KEY_NEW, "after") == 200
    conn.close()
    aliased = chat(port, KEY_NEW, model="fast")  # the new alias, to the new upstream
    assert aliased.status == 200 and aliased.json()["model"] == "gpt-4o-mini"
    assert fake.state.requests[-1].headers["Authorization"] == "Bearer sk-2nd"

    # The stream accepted before the reload ends normally.
    fake.live.bg.call(gate.set)
    assert held.result().rstrip().endswith(b"data: [DONE]")
    assert proc.proc.poll() is None
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0, proc.log()


BAD_FILES = {
    "invalid YAML": "server: [unclosed\n",
    "unknown key": "server:\n  prot: 1\n",
    "wrong type": "cache:\n  max_entries: many\n",
}


def refused(proc: ProxyProcess) -> list[str]:
    return [m.string for m in proc.matches("reload refused")]


def test_reload_refuses_a_bad_file_and_keeps_serving(
    tmp_path: Path, fake: Fake, start_proxy: Start
) -> None:
    port = free_port()
    path = write_config(tmp_path / "c.yaml", config(port, fake))
    proc = start_proxy("--config", str(path))
    proc.wait_ready(port)
    for count, (problem, text) in enumerate(BAD_FILES.items(), start=1):
        path.write_text(text)
        proc.signal(signal.SIGHUP)
        proc.wait_log("reload refused", count=count)
        assert chat(port, KEY_OLD).status == 200, problem  # the old config serves on
    lines = refused(proc)
    assert "not valid YAML: line 2" in lines[0]  # where the YAML breaks
    assert "server.prot" in lines[1] and "unknown key" in lines[1]
    assert "cache.max_entries" in lines[2]
    assert not proc.matches("config reloaded")
    proc.signal(signal.SIGTERM)
    assert proc.wait_exit() == 0, proc.log()
