"""The lean HTTP/1.1 client (``proxy.http1``) against raw upstreams that write exactly the bytes
each test wants: framing, keep-alive, streams, content codings, failures, timeouts, the pool's
limit, cancellation, back-pressure, TLS, and the same on uvloop."""

from __future__ import annotations

import asyncio
import functools
import gzip
import socket
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy import http1
from proxy.http1 import Answer, BadAnswer, Body, HeaderError, Pool, UpstreamClosed
from tests.support.tls import make_certs, server_context

JSON = ("Content-Type", "application/json")
SSE = ("Content-Type", "text/event-stream")
CHUNKED = ("Transfer-Encoding", "chunked")
END = b"0\r\n\r\n"


def reply(
    body: bytes = b"",
    *,
    status: int = 200,
    reason: str = "OK",
    headers: Sequence[tuple[str, str]] = (JSON,),
    length: bool = True,
) -> bytes:
    """An answer's bytes: status line, ``headers``, a Content-Length unless told not to, body."""
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream_head(*extra: tuple[str, str], content_type: tuple[str, str] = SSE) -> bytes:
    return reply(headers=(content_type, CHUNKED, *extra), length=False)


async def settle() -> None:
    """Let callbacks already scheduled run (connection_lost, task wake-ups): no waiting on time."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- the raw upstream ------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the upstream read it."""

    line: str
    headers: list[tuple[str, str]]
    body: bytes
    link: int  # which of the upstream's connections (0 for the first accepted)


class Link:
    """One connection the upstream accepted, as its script sees it."""

    def __init__(
        self,
        upstream: Upstream,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.upstream = upstream
        self.index = index
        self.reader = reader
        self.writer = writer

    async def request(self) -> Seen | None:
        """The next request, or None when the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            line, *rest = head[:-4].decode().split("\r\n")
            headers = [(n, v) for n, v in (h.split(": ", 1) for h in rest)]
            size = next((v for n, v in headers if n.lower() == "content-length"), "0")
            body = await self.reader.readexactly(int(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        seen = Seen(line, headers, body, self.index)
        self.upstream.requests.append(seen)
        self.upstream.arrived.put_nowait(seen)
        return seen

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def wait_eof(self) -> None:
        """Until the client closes its end (anything else it sends is dropped)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass

    def close(self) -> None:
        self.writer.close()


Script = Callable[[Link], Awaitable[None]]


class Upstream:
    """A server on 127.0.0.1 that runs ``script`` for every connection it accepts and records
    what it read. Pools made with :meth:`pool` are closed on exit."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.port = 0
        self.accepted = 0
        self.requests: list[Seen] = []
        self.arrived: asyncio.Queue[Seen] = asyncio.Queue()
        self.errors: list[BaseException] = []
        self._links: list[Link] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pools: list[Pool] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for pool in self._pools:
            await pool.close()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self._links:
            link.writer.transport.abort()
        await self._server.wait_closed()
        await settle()
        if exc_info[0] is None:
            assert not self.errors, f"the upstream's script failed: {self.errors!r}"

    def url(self, path: str = "/v1", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def pool(self, base_url: str | None = None, **options: Any) -> Pool:
        settings: dict[str, Any] = {
            "limit": 4,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 2.0,
            "total_timeout_s": 5.0,
        }
        settings.update(options)
        pool = Pool(base_url or self.url(), **settings)
        self._pools.append(pool)
        return pool

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = Link(self, self.accepted, reader, writer)
        self.accepted += 1
        self._links.append(link)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.script(link)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # by __aexit__; ending normally keeps asyncio's start_server from logging it
        except Exception as exc:  # a broken test script: reported on exit
            self.errors.append(exc)
        finally:
            writer.close()
            self._tasks.discard(task)


def replies(*answers: bytes) -> Script:
    """A script answering requests with ``answers`` in order (across connections)."""
    pending = list(answers)

    async def script(link: Link) -> None:
        while await link.request() is not None:
            link.write(pending.pop(0))

    return script


def holding(gates: dict[bytes, asyncio.Future[None]]) -> Script:
    """A script that answers each request (echoing its body) once the test resolves the
    future it puts in ``gates`` under that body."""

    async def script(link: Link) -> None:
        loop = asyncio.get_running_loop()
        while True:
            gate: asyncio.Future[None] = loop.create_future()
            seen = await link.request()
            if seen is None:
                return
            gates[seen.body] = gate
            await gate
            link.write(reply(seen.body))

    return script


async def read_to_end(stream: Body) -> bytes:
    got = b""
    while data := await stream.readany():
        got += data
    return got


async def read_at_least(stream: Body, size: int) -> bytes:
    got = b""
    while len(got) < size:
        data = await stream.readany()
        assert data, "the stream ended early"
        got += data
    return got


async def arrivals(up: Upstream, count: int) -> list[Seen]:
    return [await asyncio.wait_for(up.arrived.get(), 5) for _ in range(count)]


def streamed(answer: Answer) -> Body:
    assert answer.body is None and answer.stream is not None
    return answer.stream


# -- 1. a whole answer, and the request as it went out -----------------------------------------


async def test_a_content_length_answer_is_read_whole_and_the_request_is_well_formed() -> None:
    body = b'{"id":"chatcmpl-1","object":"chat.completion"}'
    headers = [JSON, ("X-Request-Id", "r-1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    async with Upstream(replies(reply(body, headers=headers))) as up:
        pool = up.pool()
        answer = await pool.request(
            "POST",
            "/chat/completions",
            {"Authorization": "Bearer sk-1", "Content-Type": "application/json"},
            b'{"model":"m"}',
        )
    assert answer.status == 200
    assert answer.stream is None
    assert answer.body == body
    assert answer.headers == [*headers, ("Content-Length", str(len(body)))]
    [seen] = up.requests
    assert seen.line == "POST /v1/chat/completions HTTP/1.1"
    assert seen.headers[0] == ("Host", f"127.0.0.1:{up.port}")
    assert ("Authorization", "Bearer sk-1") in seen.headers
    assert ("Content-Type", "application/json") in seen.headers
    assert ("Content-Length", "13") in seen.headers
    assert ("Accept-Encoding", "gzip, deflate") in seen.headers
    assert seen.body == b'{"model":"m"}'


# -- 2. keep-alive -----------------------------------------------------------------------------


async def test_two_requests_in_a_row_share_one_connection() -> None:
    async with Upstream(replies(reply(b'{"n":1}'), reply(b'{"n":2}'))) as up:
        pool = up.pool()
        first = await pool.request("POST", "/chat/completions", {}, b"{}")
        second = await pool.request("GET", "/models?limit=1", {})
        assert pool.size == 1
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.accepted == 1
    assert [seen.link for seen in up.requests] == [0, 0]
    assert up.requests[1].line == "GET /v1/models?limit=1 HTTP/1.1"
    assert not any(name.lower() == "content-length" for name, _ in up.requests[1].headers)


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    closing = reply(b'{"n":1}', headers=(JSON, ("Connection", "close")))
    async with Upstream(replies(closing, reply(b'{"n":2}'))) as up:
        pool = up.pool()
        first = await pool.request("POST", "/chat/completions", {}, b"{}")
        assert pool.size == 0
        second = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.accepted == 2
    assert [seen.link for seen in up.requests] == [0, 1]


# -- 3. chunked answers, whole and streamed ----------------------------------------------------


async def test_a_chunked_answer_is_read_whole() -> None:
    parts = [b'{"a":', b'1,"b":', b"[1,2,3]", b"}"]
    wire = stream_head(content_type=JSON) + b"".join(chunk(p) for p in parts) + END
    async with Upstream(replies(wire, reply(b"{}"))) as up:
        pool = up.pool()
        answer = await pool.request("POST", "/chat/completions", {}, b"{}")
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert answer.status == 200
    assert answer.body == b"".join(parts)
    assert answer.headers == [JSON, CHUNKED]
    assert again.body == b"{}"
    assert up.accepted == 1


async def test_an_event_stream_arrives_chunk_by_chunk_then_its_connection_is_reused() -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    go = asyncio.Event()
    sent_all = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head() + chunk(events[0]))
        await go.wait()
        link.write(chunk(events[1]))
        link.write(chunk(events[2]) + END)
        sent_all.set()
        await replies(reply(b'{"again":true}'))(link)

    async with Upstream(script) as up:
        pool = up.pool()
        answer = await pool.request("POST", "/chat/completions", {}, b"{}")
        assert answer.status == 200
        stream = streamed(answer)
        assert await read_at_least(stream, len(events[0])) == events[0]
        assert not sent_all.is_set()  # the first event came through before the upstream ended
        go.set()
        assert await read_to_end(stream) == events[1] + events[2]
        assert stream.at_eof()
        assert await stream.readany() == b""
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b'{"again":true}'
    assert up.accepted == 1


async def test_stream_reply_hands_over_any_answer_as_a_stream() -> None:
    async with Upstream(replies(reply(b'{"n":1}'))) as up:
        pool = up.pool()
        answer = await pool.request("POST", "/chat/completions", {}, b"{}", stream_reply=True)
        assert await read_to_end(streamed(answer)) == b'{"n":1}'


# -- 4. an answer ended by the connection's end --------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
async def test_an_answer_ended_by_close_is_complete_and_not_reused(content_type: str) -> None:
    async def script(link: Link) -> None:
        seen = await link.request()
        if link.index == 0:
            link.write(reply(headers=(("Content-Type", content_type),), length=False))
            link.write(b"part one, ")
            link.write(b"part two")
            link.close()
        elif seen is not None:
            link.write(reply(b"{}"))
            await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool()
        answer = await pool.request("GET", "/files/1/content", {})
        if answer.stream is None:
            body = answer.body
        else:
            body = await read_to_end(answer.stream)
        assert body == b"part one, part two"
        assert (answer.stream is None) == (content_type == "text/plain")
        again = await pool.request("GET", "/models", {})
    assert again.body == b"{}"
    assert up.accepted == 2


# -- 5. content codings ------------------------------------------------------------------------

PACK: dict[str, Callable[[bytes], bytes]] = {"gzip": gzip.compress, "deflate": zlib.compress}
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decoded_whole(coding: str) -> None:
    text = b'{"data":[' + b'{"id":"model-x","object":"model"},' * 300 + b"{}]}"
    wire = reply(PACK[coding](text), headers=(JSON, ("Content-Encoding", coding)))
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        answer = await pool.request("GET", "/models", {})
    assert answer.body == text


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_stream_is_decoded_as_it_arrives(coding: str) -> None:
    events = [b"data: %d\n\n" % i for i in range(3)] + [b"data: [DONE]\n\n"]
    packer = zlib.compressobj(wbits=WBITS[coding])
    pieces = [packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events]
    pieces[-1] += packer.flush()
    go = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head(("Content-Encoding", coding)) + chunk(pieces[0]))
        await go.wait()
        link.write(b"".join(chunk(p) for p in pieces[1:]) + END)
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_at_least(stream, len(events[0])) == events[0]
        go.set()
        assert await read_to_end(stream) == b"".join(events[1:])


@pytest.mark.parametrize("stream_reply", [False, True])
async def test_an_undecodable_gzip_body_is_a_bad_answer(stream_reply: bool) -> None:
    wire = reply(b"this was never gzip" * 10, headers=(JSON, ("Content-Encoding", "gzip")))
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        with pytest.raises(BadAnswer):
            answer = await pool.request("GET", "/models", {}, stream_reply=stream_reply)
            await read_to_end(streamed(answer))


async def test_a_truncated_gzip_body_is_a_bad_answer() -> None:
    """A gzip stream cut short (but framed right) does not decode to the whole body: passing on
    the part that does would hand the client a silently truncated answer."""
    text = b'{"data":[' + b'{"id":"model-x","object":"model"},' * 300 + b"{}]}"
    packed = gzip.compress(text)
    wire = reply(packed[: len(packed) // 2], headers=(JSON, ("Content-Encoding", "gzip")))
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        with pytest.raises(BadAnswer):
            await pool.request("GET", "/models", {})


async def test_an_unknown_content_coding_is_a_bad_answer() -> None:
    wire = reply(b"\x1b\x03\x00", headers=(JSON, ("Content-Encoding", "br")))
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        with pytest.raises(BadAnswer):
            await pool.request("GET", "/models", {})


# -- 6, 7. interim answers; no body ----------------------------------------------------------------


async def test_interim_answers_before_the_real_one_are_skipped() -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0)
        link.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        link.write(reply(b'{"ok":true}', status=201, reason="Created"))
        await replies(reply(b"{}"))(link)

    async with Upstream(script) as up:
        pool = up.pool()
        answer = await pool.request("POST", "/files", {}, b"x" * 10)
        again = await pool.request("GET", "/models", {})
    assert answer.status == 201
    assert answer.body == b'{"ok":true}'
    assert answer.headers == [JSON, ("Content-Length", "11")]
    assert again.body == b"{}"
    assert up.accepted == 1


async def test_a_204_has_no_body_and_keeps_the_connection() -> None:
    no_content = reply(status=204, reason="No Content", headers=(), length=False)
    async with Upstream(replies(no_content, reply(b"{}"))) as up:
        pool = up.pool()
        answer = await pool.request("DELETE", "/files/1", {})
        again = await pool.request("GET", "/models", {})
    assert answer.status == 204
    assert answer.body == b""
    assert again.body == b"{}"
    assert up.accepted == 1


# -- 8. the upstream closes ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_close_before_any_answer_is_upstream_closed_unanswered(method: str) -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.close()

    async with Upstream(script) as up:
        pool = up.pool()
        with pytest.raises(UpstreamClosed) as info:
            await pool.request(method, "/models", {})
        assert pool.size == 0
    assert info.value.answered is False
    assert len(up.requests) == 1  # a fresh connection's failure is not a reason to resend


async def test_a_close_mid_body_is_upstream_closed_answered() -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(reply(headers=(JSON, ("Content-Length", "100")), length=False) + b'{"a":')
        link.close()

    async with Upstream(script) as up:
        pool = up.pool()
        with pytest.raises(UpstreamClosed) as info:
            await pool.request("POST", "/chat/completions", {}, b"{}")
    assert info.value.answered is True


async def test_a_close_mid_stream_ends_the_stream_with_upstream_closed() -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n"]
    go = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head() + chunk(events[0]))
        await go.wait()
        link.write(chunk(events[1]))
        link.close()

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        got = await read_at_least(stream, len(events[0]))
        go.set()
        with pytest.raises(UpstreamClosed) as info:
            while data := await stream.readany():
                got += data
        assert got == events[0] + events[1]
    assert info.value.answered is True


# -- 9. a stale kept-alive connection -----------------------------------------------------------


def stale_then_fresh() -> Script:
    """The first connection answers once, then reads the next request and closes without a
    word (an idle timeout racing the request); later connections answer normally."""

    async def script(link: Link) -> None:
        if link.index == 0:
            await link.request()
            link.write(reply(b'{"n":1}'))
            await link.request()
            link.close()
        else:
            await replies(reply(b'{"n":2}'), reply(b'{"n":3}'))(link)

    return script


async def test_a_get_on_a_stale_connection_is_sent_again_on_a_new_one() -> None:
    async with Upstream(stale_then_fresh()) as up:
        pool = up.pool()
        await pool.request("GET", "/models", {})
        answer = await pool.request("GET", "/models", {})
    assert answer.body == b'{"n":2}'
    assert up.accepted == 2
    assert [seen.link for seen in up.requests] == [0, 0, 1]


async def test_a_post_on_a_stale_connection_is_not_sent_again() -> None:
    async with Upstream(stale_then_fresh()) as up:
        pool = up.pool()
        await pool.request("POST", "/chat/completions", {}, b"{}")
        with pytest.raises(UpstreamClosed) as info:
            await pool.request("POST", "/chat/completions", {}, b'{"second":1}')
        assert info.value.answered is False
        assert up.accepted == 1
        assert [seen.body for seen in up.requests] == [b"{}", b'{"second":1}']
        later = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert later.body == b'{"n":2}'
    assert up.accepted == 2


# -- 10. not HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["ssh", "bad-length", "upgrade"],
)
async def test_what_is_not_http_is_a_bad_answer(wire: bytes) -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(wire)
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool()
        with pytest.raises(BadAnswer):
            await pool.request("GET", "/models", {})
        assert pool.size == 0


# -- 11. timeouts ----------------------------------------------------------------------------------


async def test_no_answer_within_the_read_timeout_is_a_timeout() -> None:
    closed = asyncio.Event()

    async def script(link: Link) -> None:
        if link.index == 0:
            await link.request()
            await link.wait_eof()  # never answers
            closed.set()
        else:
            await replies(reply(b"{}"))(link)

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=0.2)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/models", {})
        assert 0.15 < time.monotonic() - started < 1.5
        await asyncio.wait_for(closed.wait(), 5)  # the timed-out connection was closed
        again = await pool.request("GET", "/models", {})
    assert again.body == b"{}"
    assert up.accepted == 2


async def test_a_stream_that_goes_quiet_times_out_after_what_arrived() -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head() + chunk(b"data: 1\n\n"))
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=0.2)
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_at_least(stream, 9) == b"data: 1\n\n"
        with pytest.raises(TimeoutError):
            await stream.readany()
        assert pool.size == 0


async def test_a_trickling_answer_hits_the_total_timeout() -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(reply(headers=(JSON, ("Content-Length", "1000")), length=False))
        for _ in range(1000):  # a byte every 50 ms: the read timeout never fires
            if link.reader.at_eof():
                return  # the client gave up
            link.write(b" ")
            await asyncio.sleep(0.05)

    async with Upstream(script) as up:
        # (a read timeout ten times the trickle's pace: a loaded machine does not fire it)
        pool = up.pool(read_timeout_s=0.5, total_timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/models", {})
        assert 0.95 < time.monotonic() - started < 3.0
        assert pool.size == 0


@pytest.mark.parametrize("failure", ["timeout", "undecodable"])
async def test_the_error_that_ended_a_stream_reaches_a_late_reader(failure: str) -> None:
    """A stream's reader that is busy elsewhere (writing to its own client) when the stream
    fails gets that failure on its next read, not the connection's close that followed it."""
    closed = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        if failure == "timeout":
            link.write(stream_head() + chunk(b"data: 1\n\n"))
        else:
            link.write(stream_head(("Content-Encoding", "gzip")) + chunk(b"never gzip"))
        await link.wait_eof()
        closed.set()

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=0.2)
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        await asyncio.wait_for(closed.wait(), 5)  # the client gave up on the connection...
        await settle()  # ...and has seen it closed
        with pytest.raises(TimeoutError if failure == "timeout" else BadAnswer):
            await read_to_end(stream)


# -- 12. the pool's limit --------------------------------------------------------------------------


async def test_requests_beyond_the_limit_wait_for_a_connection() -> None:
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=2)
        tasks = [asyncio.create_task(pool.request("POST", "/x", {}, b"%d" % i)) for i in range(3)]
        first_two = await arrivals(up, 2)
        await settle()
        assert up.accepted == 2
        assert pool.size == 2
        assert up.arrived.empty()  # the third waits in the pool, not at the upstream
        assert not tasks[2].done()
        early = first_two[0]
        gates[early.body].set_result(None)
        [third] = await arrivals(up, 1)
        assert third.body == b"2"
        assert third.link == early.link  # the freed connection, handed over
        assert pool.size == 2
        gates[first_two[1].body].set_result(None)
        gates[b"2"].set_result(None)
        answers = await asyncio.gather(*tasks)
    assert [a.body for a in answers] == [b"0", b"1", b"2"]
    assert up.accepted == 2


async def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=1)
        first = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        waiting = asyncio.create_task(pool.request("POST", "/x", {}, b"waiting"))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gates[b"first"].set_result(None)
        assert (await first).body == b"first"
        later = asyncio.create_task(pool.request("POST", "/x", {}, b"later"))
        await arrivals(up, 1)
        assert pool.size == 1
        gates[b"later"].set_result(None)
        assert (await later).body == b"later"
    assert up.accepted == 1


async def test_a_wait_for_a_connection_ends_at_the_total_timeout() -> None:
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=1, read_timeout_s=5.0, total_timeout_s=0.2)
        first = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        with pytest.raises(TimeoutError):
            await pool.request("POST", "/x", {}, b"waiting")
        assert up.arrived.empty()  # it never left the pool
        with pytest.raises(TimeoutError):  # the first one hit the same bound, at the upstream
            await first
        later = asyncio.create_task(pool.request("POST", "/x", {}, b"later"))
        await arrivals(up, 1)
        gates[b"later"].set_result(None)
        assert (await later).body == b"later"
        assert pool.size == 1


async def test_a_waiter_cancelled_as_it_is_handed_a_connection_passes_it_on() -> None:
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=1)
        first = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        waiting = asyncio.create_task(pool.request("POST", "/x", {}, b"waiting"))
        await settle()
        release = pool.release

        def release_then_cancel(conn: Any) -> None:  # cancelled once the connection is its
            release(conn)
            waiting.cancel()

        pool.release = release_then_cancel  # type: ignore[method-assign]
        gates[b"first"].set_result(None)
        assert (await first).body == b"first"
        with pytest.raises(asyncio.CancelledError):
            await waiting
        pool.release = release  # type: ignore[method-assign]
        later = asyncio.create_task(pool.request("POST", "/x", {}, b"later"))
        await arrivals(up, 1)
        gates[b"later"].set_result(None)
        assert (await later).body == b"later"
        assert pool.size == 1
    assert up.accepted == 1
    assert [seen.body for seen in up.requests] == [b"first", b"later"]


# -- 13. cancellation and Body.close ---------------------------------------------------------------


async def test_cancelling_a_request_in_flight_closes_its_connection() -> None:
    closed = asyncio.Event()

    async def script(link: Link) -> None:
        if link.index == 0:
            await link.request()
            await link.wait_eof()
            closed.set()
        else:
            await replies(reply(b"{}"))(link)

    async with Upstream(script) as up:
        pool = up.pool()
        task = asyncio.create_task(pool.request("POST", "/chat/completions", {}, b"{}"))
        await arrivals(up, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 5)
        assert pool.size == 0
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b"{}"
    assert up.accepted == 2


async def test_body_close_before_the_end_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def script(link: Link) -> None:
        if link.index == 0:
            await link.request()
            link.write(stream_head() + chunk(b"data: 1\n\n"))
            await link.wait_eof()
            closed.set()
        else:
            await replies(reply(b"{}"))(link)

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        await read_at_least(stream, 9)
        stream.close()
        assert stream.at_eof()
        await asyncio.wait_for(closed.wait(), 5)
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b"{}"
    assert up.accepted == 2


async def test_body_close_at_the_end_gives_the_connection_back() -> None:
    wire = stream_head() + chunk(b"data: 1\n\n") + chunk(b"data: [DONE]\n\n") + END
    async with Upstream(replies(wire, reply(b"{}"))) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_at_least(stream, 23) == b"data: 1\n\ndata: [DONE]\n\n"
        stream.close()
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b"{}"
    assert up.accepted == 1


async def test_a_stream_that_ended_while_its_reader_was_behind_gives_back_a_reading_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The socket stops being read while a stream's reader is behind; if the answer ends then
    and the reader closes without reading, the connection goes back to the pool reading again
    (else the next answer on it would never be read)."""
    monkeypatch.setattr(http1, "HIGH_WATER", 1024)
    binary = ("Content-Type", "application/octet-stream")
    wire = reply(b"x" * 8192, headers=(binary,))  # one write: past the mark in one read
    async with Upstream(replies(wire, reply(b"{}"))) as up:
        pool = up.pool(read_timeout_s=2.0)
        stream = streamed(await pool.request("GET", "/files/f/content", {}))
        conn = stream._conn
        assert conn is not None
        while not conn._complete:  # the whole answer in, reading paused, nothing read yet
            await asyncio.sleep(0)
        assert conn._paused
        stream.close()
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b"{}"
    assert up.accepted == 1


async def test_a_post_never_goes_out_on_an_idle_connection_that_is_closing() -> None:
    """Closing, but not yet closed (its end is reported on a later turn): skipped, and the POST
    goes out on a new connection, since nothing was sent on the old one."""
    async with Upstream(replies(reply(b"{}"), reply(b"{}"))) as up:
        pool = up.pool()
        assert (await pool.request("POST", "/chat/completions", {}, b"{}")).body == b"{}"
        [idle] = list(pool._idle)
        assert idle.transport is not None
        idle.transport.close()  # is_closing() now; connection_lost comes later
        again = await pool.request("POST", "/chat/completions", {}, b"{}")
    assert again.body == b"{}"
    assert up.accepted == 2


# -- 14. header injection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Note": "a\r\nInjected: 1"},
        {"X-Note": "a\nInjected: 1"},
        {"X-Note": "a\rb"},
        {"X-Bad\r\nInjected": "1"},
    ],
    ids=["crlf", "lf", "cr", "in-name"],
)
async def test_a_line_break_in_a_header_is_refused_before_sending(headers: dict[str, str]) -> None:
    async with Upstream(replies()) as up:
        pool = up.pool()
        with pytest.raises(HeaderError):
            await pool.request("POST", "/chat/completions", headers, b"{}")
        assert pool.size == 0
    assert up.accepted == 0


# -- 15. back-pressure -----------------------------------------------------------------------------


async def test_a_fast_stream_is_buffered_only_up_to_the_high_water_mark() -> None:
    """The upstream writes 8 MiB as fast as its socket takes it; the test reads only once the
    upstream has stalled (its write buffer above its high-water mark, so ``drain`` waits). It
    can stall only if the client stopped reading; and what each read returns is bounded by the
    client's high-water mark plus one socket read."""
    piece = bytes(range(256)) * 256  # 64 KiB
    total = 128 * len(piece)
    stalls: asyncio.Queue[None] = asyncio.Queue()
    finished = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        sock = link.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        octets = ("Content-Type", "application/octet-stream")
        link.write(reply(headers=(octets, ("Content-Length", str(total))), length=False))
        transport = link.writer.transport
        for _ in range(total // len(piece)):
            link.write(piece)
            if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
                stalls.put_nowait(None)
            await link.writer.drain()
            await asyncio.sleep(0)  # the client may run between two writes
        finished.set()
        await link.wait_eof()

    async def stalled_or_finished() -> bool:
        stall = asyncio.ensure_future(stalls.get())
        done = asyncio.ensure_future(finished.wait())
        await asyncio.wait({stall, done}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        stall.cancel()
        done.cancel()
        return not stall.cancelled() and stall.done()

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("GET", "/files/1/content", {}))
        got = bytearray()
        sizes = []
        rounds = stalled = 0
        while data := await stream.readany():
            got += data
            sizes.append(len(data))
            if not finished.is_set():
                rounds += 1
                stalled += await stalled_or_finished()
        assert len(got) == total
        assert got == piece * (total // len(piece))
        assert finished.is_set()
    # Between two reads the upstream ran ahead only until the client stopped reading.
    assert stalled >= 8, (stalled, rounds)
    assert max(sizes) <= http1.HIGH_WATER + 256 * 1024, max(sizes)


# -- 16. closing the pool --------------------------------------------------------------------------


async def test_pool_close_fails_waiters_and_refuses_new_requests() -> None:
    closed = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        await link.wait_eof()  # never answers
        closed.set()

    async with Upstream(script) as up:
        pool = up.pool(limit=1)
        in_flight = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        waiting = asyncio.create_task(pool.request("POST", "/x", {}, b"second"))
        await settle()
        await pool.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 2)
        await asyncio.wait_for(closed.wait(), 5)  # the open connection was aborted
        assert pool.size == 0
        with pytest.raises(ConnectionError):
            await pool.request("POST", "/x", {}, b"third")
        in_flight.cancel()
        await asyncio.gather(in_flight, return_exceptions=True)
    assert up.accepted == 1


async def test_pool_close_fails_a_request_in_flight() -> None:
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool()
        in_flight = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        await pool.close()
        done, _ = await asyncio.wait({in_flight}, timeout=1.0)
        if not done:
            in_flight.cancel()
        assert done, "a request in flight still waits (with no timer left) after pool.close()"
        assert isinstance(in_flight.exception(), OSError)


async def test_pool_close_fails_a_stream_being_read() -> None:
    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head() + chunk(b"data: 1\n\n"))
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        await read_at_least(stream, 9)
        reading = asyncio.create_task(stream.readany())
        await settle()
        await pool.close()
        done, _ = await asyncio.wait({reading}, timeout=1.0)
        if not done:
            reading.cancel()
        assert done, "a stream's reader still waits (with no timer left) after pool.close()"
        assert isinstance(reading.exception(), OSError)


# -- a request cancelled just as its answer completes ----------------------------------------------


async def test_a_request_cancelled_as_its_answer_completes_leaves_the_next_one_alone() -> None:
    """With ``limit=1``, request A's answer completes: the connection goes to request B, which
    waits for it, and A is cancelled in that same moment (its client went away, a
    ``wait_for`` expired). A's cancellation must not close the connection B now owns."""
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=1, read_timeout_s=0.5)
        first = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        second = asyncio.create_task(pool.request("POST", "/x", {}, b"second"))
        await settle()
        release = pool.release

        def release_then_cancel(conn: Any) -> None:
            release(conn)  # handed to the second request
            first.cancel()

        pool.release = release_then_cancel  # type: ignore[method-assign]
        gates[b"first"].set_result(None)
        await asyncio.gather(first, return_exceptions=True)
        [seen] = await arrivals(up, 1)
        assert seen.body == b"second"
        gates[b"second"].set_result(None)
        done, _ = await asyncio.wait({second}, timeout=1.5)
        if not done:
            second.cancel()
        assert done, "the second request hangs: the first one's cancellation closed its connection"
        assert second.result().body == b"second"


# -- bytes after the answer --------------------------------------------------------------------


async def test_bytes_after_an_answer_in_the_same_read_make_the_connection_unusable() -> None:
    """An upstream that sends more than its answer (here the start of a second answer, in the
    same segment as the first): the connection must not be reused, or the next request reads
    the leftover as the start of its own answer."""
    leftover = reply(headers=(JSON, ("Content-Length", "10")), length=False) + b"left"

    async with Upstream(replies(reply(b'{"n":1}') + leftover, reply(b'{"n":2}'))) as up:
        pool = up.pool()
        first = await pool.request("GET", "/models", {})
        assert first.body == b'{"n":1}'
        second = await pool.request("GET", "/models", {})
    assert second.body == b'{"n":2}'


# -- 17. uvloop ------------------------------------------------------------------------------------


def run_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        await scenario()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(checked())


UVLOOP_SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    test_a_content_length_answer_is_read_whole_and_the_request_is_well_formed,
    test_an_event_stream_arrives_chunk_by_chunk_then_its_connection_is_reused,
    functools.partial(test_an_answer_ended_by_close_is_complete_and_not_reused, "text/plain"),
    functools.partial(test_a_compressed_stream_is_decoded_as_it_arrives, "gzip"),
    test_a_close_mid_stream_ends_the_stream_with_upstream_closed,
    test_a_get_on_a_stale_connection_is_sent_again_on_a_new_one,
    test_a_post_on_a_stale_connection_is_not_sent_again,
    test_a_stream_that_goes_quiet_times_out_after_what_arrived,
    test_requests_beyond_the_limit_wait_for_a_connection,
    test_a_cancelled_waiter_does_not_keep_a_slot,
    test_cancelling_a_request_in_flight_closes_its_connection,
    test_body_close_before_the_end_closes_the_connection,
    test_a_fast_stream_is_buffered_only_up_to_the_high_water_mark,
]


@pytest.mark.parametrize(
    "scenario",
    UVLOOP_SCENARIOS,
    ids=[getattr(s, "func", s).__name__.removeprefix("test_") for s in UVLOOP_SCENARIOS],
)
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    run_on_uvloop(scenario)


# -- 18. TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate it signs for localhost."""
    return make_certs(tmp_path_factory.mktemp("http1-tls"), alt_names="DNS:localhost,IP:127.0.0.1")


def server_tls(certs: Path) -> ssl.SSLContext:
    return server_context(certs)


async def tls_with_the_ca(certs: Path) -> None:
    events = [b"data: 1\n\n", b"data: [DONE]\n\n"]
    wire = stream_head() + b"".join(chunk(e) for e in events) + END
    async with Upstream(replies(reply(b'{"ok":true}'), wire), tls=server_tls(certs)) as up:
        trusted = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        pool = up.pool(up.url(host="localhost"), ssl_context=trusted)
        answer = await pool.request("POST", "/chat/completions", {}, b"{}")
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_to_end(stream) == b"".join(events)
    assert answer.body == b'{"ok":true}'
    assert up.accepted == 1
    assert up.requests[0].line == "POST /v1/chat/completions HTTP/1.1"
    assert up.requests[0].headers[0] == ("Host", f"localhost:{up.port}")


async def tls_without_the_ca(certs: Path) -> None:
    async with Upstream(replies(reply(b"{}")), tls=server_tls(certs)) as up:
        pool = up.pool(up.url(host="localhost"))
        with pytest.raises(OSError) as info:
            await pool.request("GET", "/models", {})
        assert isinstance(info.value, ssl.SSLCertVerificationError), repr(info.value)
        assert pool.size == 0
    assert up.requests == []


async def test_tls_with_the_ca_works(certs: Path) -> None:
    await tls_with_the_ca(certs)


async def test_tls_without_the_ca_is_refused(certs: Path) -> None:
    await tls_without_the_ca(certs)


def test_tls_on_uvloop(certs: Path) -> None:
    run_on_uvloop(functools.partial(tls_with_the_ca, certs))
    run_on_uvloop(functools.partial(tls_without_the_ca, certs))


# -- 19. the review's findings ---------------------------------------------------------------------


async def test_body_close_from_another_task_fails_a_waiting_reader() -> None:
    """One task waits in ``readany`` on an unfinished answer while another closes the stream
    (its client went away): the waiting reader gets a connection error, it does not hang."""

    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head() + chunk(b"data: 1\n\n"))
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=5.0)
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_at_least(stream, 9) == b"data: 1\n\n"
        reading = asyncio.create_task(stream.readany())
        await settle()
        assert not reading.done()  # waiting for more
        stream.close()
        done, _ = await asyncio.wait({reading}, timeout=1.0)
        if not done:
            reading.cancel()
        assert done, "a reader waiting on the stream hangs after another task closed it"
        assert isinstance(reading.exception(), OSError), repr(reading.exception())
        assert pool.size == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
async def test_a_cut_short_gzip_answer_ended_by_close_is_a_bad_answer_at_once(
    content_type: str,
) -> None:
    """Neither Content-Length nor chunked: the body ends with the connection. A gzip stream cut
    short there is refused when the connection closes, not after the read timeout."""
    text = b'{"data":[' + b'{"id":"model-x","object":"model"},' * 300 + b"{}]}"
    packed = gzip.compress(text)
    head = reply(
        headers=(("Content-Type", content_type), ("Content-Encoding", "gzip")), length=False
    )

    async def script(link: Link) -> None:
        await link.request()
        link.write(head + packed[: len(packed) // 2])
        link.close()

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=5.0, total_timeout_s=10.0)
        async with asyncio.timeout(1):
            with pytest.raises(BadAnswer) as info:
                answer = await pool.request("GET", "/models", {})
                await read_to_end(streamed(answer))
        assert info.value.answered is True
        assert pool.size == 0


async def test_a_request_cancelled_as_its_exchange_fails_ends_cancelled() -> None:
    """The exchange fails (garbage from the upstream: BadAnswer on the request's waiter) and the
    request's task is cancelled in that same pass, before it resumes: it ends cancelled."""

    async def script(link: Link) -> None:
        await link.request()
        link.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool(read_timeout_s=5.0)
        task = asyncio.create_task(pool.request("POST", "/chat/completions", {}, b"{}"))
        forget = pool.forget
        failed: list[BaseException | None] = []

        def forget_then_cancel(conn: Any) -> None:  # _fail: waiter failed, transport aborted
            failed.append(conn._exc)
            forget(conn)
            task.cancel()

        pool.forget = forget_then_cancel  # type: ignore[method-assign]
        done, _ = await asyncio.wait({task}, timeout=2.0)
        pool.forget = forget  # type: ignore[method-assign]
        if not done:
            task.cancel()
        assert done
        assert isinstance(failed[0], BadAnswer), failed  # the exchange had failed first
        assert task.cancelled(), f"ended with {task.exception()!r} instead of its cancellation"


async def test_a_host_given_to_the_request_is_the_one_host_header_sent() -> None:
    async with Upstream(replies(reply(b"{}"))) as up:
        pool = up.pool()
        answer = await pool.request("GET", "/models", {"X-Other": "1"}, host="api.internal")
    assert answer.body == b"{}"
    [seen] = up.requests
    assert [(n, v) for n, v in seen.headers if n.lower() == "host"] == [("Host", "api.internal")]


async def test_a_host_with_a_line_break_is_refused_before_sending() -> None:
    async with Upstream(replies()) as up:
        pool = up.pool()
        with pytest.raises(HeaderError):
            await pool.request("GET", "/models", {}, host="api.internal\r\nInjected: 1")
        assert pool.size == 0
    assert up.accepted == 0


def answer_then_close(closed: asyncio.Event) -> Script:
    """The first connection answers one request and closes at once (FIN after the answer, as
    an upstream's idle timeout does); later connections answer normally."""

    async def script(link: Link) -> None:
        if link.index == 0:
            await link.request()
            link.write(reply(b'{"n":1}'))
            link.close()
            await link.writer.wait_closed()
            closed.set()
        else:
            await replies(reply(b'{"n":2}'), reply(b'{"n":3}'))(link)

    return script


async def test_a_post_after_the_upstream_closed_an_idle_connection_goes_out_on_a_new_one() -> None:
    closed = asyncio.Event()
    async with Upstream(answer_then_close(closed)) as up:
        pool = up.pool()
        first = await pool.request("POST", "/chat/completions", {}, b"{}")
        await asyncio.wait_for(closed.wait(), 5)
        await settle()  # the client has read the EOF
        second = await pool.request("POST", "/chat/completions", {}, b'{"second":1}')
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.accepted == 2
    assert [(seen.link, seen.body) for seen in up.requests] == [(0, b"{}"), (1, b'{"second":1}')]


async def test_a_post_in_the_same_pass_as_an_idle_connections_eof_goes_out_on_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The narrowest window: a POST that starts right as the EOF of its idle connection is
    read (before anything that read schedules has run) must not be written into that
    connection, where it would fail with UpstreamClosed."""
    closed = asyncio.Event()
    posted: list[asyncio.Task[Answer]] = []

    async with Upstream(answer_then_close(closed)) as up:
        pool = up.pool()
        eof_received = http1._Connection.eof_received

        def eof_then_post(self: Any) -> bool | None:
            keep_open = eof_received(self)
            if not posted:  # once: the first connection's EOF, after its answer
                request = pool.request("POST", "/chat/completions", {}, b'{"second":1}')
                posted.append(asyncio.ensure_future(request))
            return keep_open

        monkeypatch.setattr(http1._Connection, "eof_received", eof_then_post)
        first = await pool.request("POST", "/chat/completions", {}, b"{}")
        await asyncio.wait_for(closed.wait(), 5)
        for _ in range(100):  # until the client reads the EOF (a few loop passes)
            if posted:
                break
            await asyncio.sleep(0)
        assert posted, "the client never saw the upstream's EOF"
        second = await asyncio.wait_for(posted[0], 5)
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.accepted == 2
    assert [(seen.link, seen.body) for seen in up.requests] == [(0, b"{}"), (1, b'{"second":1}')]


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


async def test_a_raw_deflate_answer_is_decoded_whole() -> None:
    text = b'{"data":[' + b'{"id":"model-x","object":"model"},' * 300 + b"{}]}"
    wire = reply(raw_deflate(text), headers=(JSON, ("Content-Encoding", "deflate")))
    async with Upstream(replies(wire, reply(b"{}"))) as up:
        pool = up.pool()
        answer = await pool.request("GET", "/models", {})
        again = await pool.request("GET", "/models", {})
    assert answer.body == text
    assert again.body == b"{}"
    assert up.accepted == 1


async def test_a_raw_deflate_stream_is_decoded_as_it_arrives() -> None:
    events = [b"data: %d\n\n" % i for i in range(3)] + [b"data: [DONE]\n\n"]
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    pieces = [packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events]
    pieces[-1] += packer.flush()
    go = asyncio.Event()

    async def script(link: Link) -> None:
        await link.request()
        link.write(stream_head(("Content-Encoding", "deflate")) + chunk(pieces[0]))
        await go.wait()
        link.write(b"".join(chunk(p) for p in pieces[1:]) + END)
        await link.wait_eof()

    async with Upstream(script) as up:
        pool = up.pool()
        stream = streamed(await pool.request("POST", "/chat/completions", {}, b"{}"))
        assert await read_at_least(stream, len(events[0])) == events[0]
        go.set()
        assert await read_to_end(stream) == b"".join(events[1:])


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
@pytest.mark.parametrize("stream_reply", [False, True], ids=["whole", "streamed"])
async def test_a_deflate_body_whose_first_chunk_is_one_byte_decodes(
    wbits: int, stream_reply: bool
) -> None:
    """One byte is too little to tell zlib-wrapped deflate from raw: it waits for the next."""
    text = b'{"data":[' + b'{"id":"model-x","object":"model"},' * 50 + b"{}]}"
    packer = zlib.compressobj(wbits=wbits)
    packed = packer.compress(text) + packer.flush()
    head = stream_head(("Content-Encoding", "deflate"), content_type=JSON)
    wire = head + chunk(packed[:1]) + chunk(packed[1:2]) + chunk(packed[2:]) + END
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        answer = await pool.request("GET", "/models", {}, stream_reply=stream_reply)
        body = answer.body if answer.stream is None else await read_to_end(answer.stream)
    assert body == text


@pytest.mark.parametrize("stream_reply", [False, True], ids=["whole", "streamed"])
async def test_a_chunked_answers_trailers_are_not_among_its_headers(stream_reply: bool) -> None:
    wire = (
        stream_head(content_type=JSON)
        + chunk(b'{"a":')
        + chunk(b"1}")
        + b"0\r\nX-Trailer: t\r\nX-Other-Trailer: u\r\n\r\n"
    )
    async with Upstream(replies(wire, reply(b"{}"))) as up:
        pool = up.pool()
        answer = await pool.request("POST", "/x", {}, b"{}", stream_reply=stream_reply)
        body = answer.body if answer.stream is None else await read_to_end(answer.stream)
        again = await pool.request("POST", "/x", {}, b"{}")
    assert body == b'{"a":1}'
    assert answer.headers == [JSON, CHUNKED]
    assert again.body == b"{}"
    assert up.accepted == 1  # the trailers ended the answer where they should


def _filler(count: int, size: int) -> list[tuple[str, str]]:
    return [(f"X-Filler-{i:03d}", "v" * size) for i in range(count)]


# JSON (12 + 16) and ``Content-Length: 2`` (14 + 1) come with every answer below: 43 bytes.
_BASE_HEADER_BYTES = 43


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        (_filler(http1.MAX_HEADERS - 2, 1), False),  # 256 with the two of every answer
        (_filler(http1.MAX_HEADERS - 1, 1), True),  # 257
        ([("X-Fill", "v" * (http1.MAX_HEADER_BYTES - _BASE_HEADER_BYTES - 6))], False),
        ([("X-Fill", "v" * (http1.MAX_HEADER_BYTES - _BASE_HEADER_BYTES - 5))], True),
        (_filler(9, 8000), True),  # 72 kB in 9 headers
    ],
    ids=["256-headers", "257-headers", "64KiB", "64KiB+1", "72kB-in-9"],
)
async def test_too_many_or_too_large_answer_headers_are_a_bad_answer(
    extra: list[tuple[str, str]], refused: bool
) -> None:
    wire = reply(b"{}", headers=(JSON, *extra))
    async with Upstream(replies(wire)) as up:
        pool = up.pool()
        if refused:
            with pytest.raises(BadAnswer) as info:
                await pool.request("GET", "/models", {})
            assert info.value.answered is False
            assert pool.size == 0
        else:
            answer = await pool.request("GET", "/models", {})
            assert answer.body == b"{}"
            assert len(answer.headers) == len(extra) + 2


async def test_a_request_body_over_the_single_write_size_arrives_intact() -> None:
    body = bytes(range(256)) * 800  # 200 KiB, over the 64 KiB joined with the head
    assert len(body) > http1._JOIN_BELOW
    async with Upstream(replies(reply(b'{"n":1}'), reply(b'{"n":2}'))) as up:
        pool = up.pool()
        octets = {"Content-Type": "application/octet-stream"}
        first = await pool.request("POST", "/files", octets, body)
        second = await pool.request("POST", "/x", {}, b"{}")
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.requests[0].body == body
    assert ("Content-Length", str(len(body))) in up.requests[0].headers
    assert up.requests[1].body == b"{}"
    assert up.accepted == 1


async def test_an_idle_connection_older_than_keepalive_is_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE_S", 0.0)
    async with Upstream(replies(reply(b'{"n":1}'), reply(b'{"n":2}'))) as up:
        pool = up.pool()
        first = await pool.request("GET", "/models", {})
        second = await pool.request("GET", "/models", {})
        assert pool.size == 1  # the old one was closed, not kept beside the new one
    assert (first.body, second.body) == (b'{"n":1}', b'{"n":2}')
    assert up.accepted == 2
    assert [seen.link for seen in up.requests] == [0, 1]


async def test_headers_at_is_when_the_headers_came_in_for_whole_and_streamed_answers() -> None:
    events = b"data: 1\n\ndata: [DONE]\n\n"
    wire = stream_head() + chunk(events) + END
    async with Upstream(replies(reply(b"{}"), wire)) as up:
        pool = up.pool()
        before = time.perf_counter()
        whole = await pool.request("GET", "/models", {})
        between = time.perf_counter()
        answer = await pool.request("POST", "/chat/completions", {}, b"{}")
        stream = streamed(answer)
        after_headers = time.perf_counter()
        assert await read_to_end(stream) == events
    assert whole.body == b"{}"
    assert before < whole.headers_at <= between < answer.headers_at <= after_headers


async def test_the_wait_for_a_connection_and_the_exchange_share_one_total_timeout() -> None:
    """With ``limit=1`` the second request waits 0.6 s of its 1 s for the connection the first
    one holds, gets it, and the upstream never answers it: it times out 1 s after it started
    (not 0.6 s + a whole 1 s more; the bounds leave half a second for a loaded machine)."""
    gates: dict[bytes, asyncio.Future[None]] = {}
    async with Upstream(holding(gates)) as up:
        pool = up.pool(limit=1, read_timeout_s=5.0, total_timeout_s=5.0)
        first = asyncio.create_task(pool.request("POST", "/x", {}, b"first"))
        await arrivals(up, 1)
        pool.total_timeout_s = 1.0  # for the second request (the first keeps its 5 s)
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = asyncio.create_task(pool.request("POST", "/x", {}, b"second"))
        # The upstream answers the first request 0.6 s in: the connection goes to the second.
        loop.call_at(started + 0.6, gates[b"first"].set_result, None)
        with pytest.raises(TimeoutError):
            await second
        elapsed = loop.time() - started
        assert (await first).body == b"first"
        assert [seen.body for seen in up.requests] == [b"first", b"second"]
    assert 0.95 < elapsed < 1.5, elapsed


# -- the same on uvloop ----------------------------------------------------------------------------

REVIEW_UVLOOP_SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    test_body_close_from_another_task_fails_a_waiting_reader,
    functools.partial(
        test_a_cut_short_gzip_answer_ended_by_close_is_a_bad_answer_at_once, "application/json"
    ),
    functools.partial(
        test_a_cut_short_gzip_answer_ended_by_close_is_a_bad_answer_at_once,
        "application/octet-stream",
    ),
    test_a_request_cancelled_as_its_exchange_fails_ends_cancelled,
    test_a_post_after_the_upstream_closed_an_idle_connection_goes_out_on_a_new_one,
    test_a_raw_deflate_stream_is_decoded_as_it_arrives,
    functools.partial(test_a_chunked_answers_trailers_are_not_among_its_headers, True),
]


def _scenario_id(scenario: Callable[[], Awaitable[None]]) -> str:
    name = getattr(scenario, "func", scenario).__name__.removeprefix("test_")
    return "-".join([name, *map(str, getattr(scenario, "args", ()))])


@pytest.mark.parametrize(
    "scenario", REVIEW_UVLOOP_SCENARIOS, ids=[_scenario_id(s) for s in REVIEW_UVLOOP_SCENARIOS]
)
def test_review_fixes_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    run_on_uvloop(scenario)


def test_a_post_racing_an_idle_connections_eof_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    run_on_uvloop(
        functools.partial(
            test_a_post_in_the_same_pass_as_an_idle_connections_eof_goes_out_on_a_new_one,
            monkeypatch,
        )
    )
