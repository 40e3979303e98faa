"""Client faults: a client that leaves mid-body, mid-stream, or while it shares a call with
others, and one that trickles its headers (slowloris). No other client is harmed and no
upstream call is leaked."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiohttp

from tests.cache.conftest import CHAT, HELLO, post
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.core.test_cli import start, stop, wait_listening
from tests.jobs.conftest import wait_for
from tests.support.live import BackgroundLoop

AUTH = {"Authorization": f"Bearer {KEY_A}"}
EMBED = "/v1/embeddings"


def _gate(bg: BackgroundLoop, fake: Fake) -> asyncio.Event:
    def make() -> asyncio.Event:
        fake.state.stream_gate = asyncio.Event()
        return fake.state.stream_gate

    return bg.call(make)


def test_client_leaving_mid_body_sends_nothing_upstream(proxy: Proxy, fake: Fake) -> None:
    with socket.create_connection(("127.0.0.1", proxy.live.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY_A.encode() + b"\r\nContent-Length: 5000\r\n\r\n"
            b'{"model": "gpt-4o-mini", "messages": ['
        )
    answer = post(proxy.url, CHAT, HELLO)  # the proxy still serves others
    assert answer.status == 200
    assert fake.state.calls[CHAT] == 1  # only the complete request went upstream


def test_leader_leaving_a_shared_stream_harms_no_follower(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    gate = _gate(bg, fake)
    body = {**HELLO, "stream": True}

    async def scenario() -> bytes:
        async with (
            aiohttp.ClientSession(headers=AUTH) as leader_s,
            aiohttp.ClientSession(headers=AUTH) as follower_s,
        ):
            leader = await leader_s.post(f"{proxy.base_url}/chat/completions", json=body)
            await asyncio.wait_for(leader.content.readuntil(b"\n\n"), 5)
            follower = await follower_s.post(f"{proxy.base_url}/chat/completions", json=body)
            await asyncio.wait_for(follower.content.readuntil(b"\n\n"), 5)
            assert follower.headers.get("X-Coalesced") is not None
            leader.close()  # the leader goes away mid-stream
            bg.loop.call_soon_threadsafe(gate.set)
            return await asyncio.wait_for(follower.read(), 10)

    rest = asyncio.run(scenario())
    assert rest.endswith(b"data: [DONE]\n\n")
    assert fake.state.calls[CHAT] == 1
    assert fake.state.completed_streams == 1


def test_everyone_leaving_a_shared_stream_cancels_the_upstream_call(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    _gate(bg, fake)  # never opened
    body = {**HELLO, "stream": True}

    async def scenario() -> None:
        sessions = [aiohttp.ClientSession(headers=AUTH) for _ in range(3)]
        try:
            responses = []
            for session in sessions:
                resp = await session.post(f"{proxy.base_url}/chat/completions", json=body)
                await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
                responses.append(resp)
            for resp in responses:
                resp.close()
        finally:
            for session in sessions:
                await session.close()

    asyncio.run(scenario())
    wait_for(lambda: fake.state.cancelled_streams == 1, what="the upstream call to be cancelled")
    assert fake.state.in_flight == 0
    assert fake.state.calls[CHAT] == 1


def test_member_leaving_a_batch_harms_no_other_member(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {"cache": {"enabled": False}, "batching": {"embeddings": {"max_wait_ms": 300}}}
    )
    fake.state.latency_ms = 200

    async def scenario() -> list[dict[str, object]]:
        async with aiohttp.ClientSession(headers=AUTH) as session:

            async def embed(text: str) -> dict[str, object]:
                body = {"model": "text-embedding-3-small", "input": text}
                async with session.post(f"{proxy.base_url}/embeddings", json=body) as resp:
                    assert resp.status == 200
                    return await resp.json()  # type: ignore[no-any-return]

            leaver = asyncio.create_task(embed("leaves"))
            stayers = [asyncio.create_task(embed(f"stays {i}")) for i in range(3)]
            await asyncio.sleep(0)  # let every request leave the client
            wait = asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_for(lambda: fake.state.in_flight == 1, what="the batch call")
            )
            await wait
            leaver.cancel()  # the member's client goes away while its batch is upstream
            return list(await asyncio.gather(*stayers))

    answers = asyncio.run(scenario())
    assert [a["object"] for a in answers] == ["list"] * 3
    assert all(len(a["data"]) == 1 for a in answers)  # type: ignore[arg-type]
    assert fake.state.calls[EMBED] == 1


def test_slowloris_headers_are_timed_out_and_others_served(tmp_path: Path, fake: Fake) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"server:\n  idle_timeout_s: 1\nupstreams:\n  - name: fake\n    base_url: {fake.url}\n"
    )
    proc = start("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    try:
        port, _ = wait_listening(proc)
        slow = socket.create_connection(("127.0.0.1", port))
        slow.settimeout(10)
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        served = post(f"http://127.0.0.1:{port}", CHAT, HELLO)  # others are served meanwhile
        assert served.status == 200
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 8:
            try:
                slow.sendall(b"X-Drip: 1\r\n")  # one header line at a time, never the end
                closed = slow.recv(1, socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                time.sleep(0.2)
            except OSError:
                closed = True
        slow.close()
        assert closed, "a connection that never finished its headers was kept open"
    finally:
        stop(proc)
