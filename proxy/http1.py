"""A lean HTTP/1.1 client for the upstream hot path: keep-alive connections, httptools' parser.

Why not aiohttp's ``ClientSession`` here: in a forwarder that does nothing else, its per-request
work (request and response objects, connector bookkeeping, timers, payload wrapping) is more than
half of the CPU. The 30-line aiohttp forwarder of ``bench/`` serves 2.7x as many requests per
second with this client in its place (nginx + wrk, one run). The proxy keeps aiohttp's client for
what this one does not do: request bodies streamed from the client, and ``HEAD``.

What it does: one :class:`Pool` per upstream, at most ``limit`` connections, kept alive and reused
newest first (idle ones close after :data:`KEEPALIVE_S`); a request waits for a free connection
at the limit. An answer is read whole, or handed over as a stream of chunks once its headers
are in (event streams, binary bodies, or when the caller asks), with back-pressure: the socket
stops being read while more than :data:`HIGH_WATER` bytes wait for the reader. gzip and deflate
answers are decoded. Timeouts: to connect, for the first byte and between two reads, and for the
whole exchange. An idempotent request that finds its reused connection closed by the upstream
before any byte of the answer is sent once more on a new one (RFC 9112 9.3.1); a ``POST`` is not.

Errors are :class:`OSError` (:class:`UpstreamClosed`, :class:`BadAnswer`, connection errors) or
:class:`TimeoutError`; :class:`UpstreamClosed` says whether the answer had begun.
:class:`HeaderError` (a :class:`ValueError`): a header would split the request; nothing is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["Answer", "BadAnswer", "Body", "HeaderError", "Pool", "UpstreamClosed", "is_streamed"]

#: Idle connections older than this are closed instead of reused (aiohttp's default too).
KEEPALIVE_S = 15.0
#: Bytes of a streamed answer buffered for a slow reader before the socket stops being read.
HIGH_WATER = 256 * 1024
#: Methods that may be sent again when a reused connection turns out closed (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: An answer's headers beyond these are refused (aiohttp's client allows 8 KiB per line, 128).
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 256
#: A request body goes out in one write with its head up to this size (one copy, one syscall).
_JOIN_BELOW = 64 * 1024


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer ended."""

    def __init__(self, message: str, *, answered: bool) -> None:
        super().__init__(message)
        #: Whether the status line and headers had arrived (the answer "broke off").
        self.answered = answered


class BadAnswer(ConnectionError):
    """What came back is not HTTP/1.1 this client can read."""

    #: Whether the status line and headers had arrived (then it is a broken answer).
    answered = False


_UNDECODABLE = "the upstream's compressed answer does not decode ({})"


class HeaderError(ValueError):
    """A header name or value would split the request (a line break in it)."""


class _NothingReceived(Exception):
    """Internal: the connection closed before a byte of the answer (a stale kept-alive one)."""


class _Unusable(Exception):
    """Internal: the connection closed before the request was written: nothing was sent."""


def is_streamed(content_type: str) -> bool:
    """Event streams and binary bodies pass on as they arrive; JSON and text are read whole."""
    if not content_type:
        return False
    ctype = content_type.split(";", 1)[0].strip().lower()
    return ctype == "text/event-stream" or not (ctype.endswith("json") or ctype.startswith("text/"))


@dataclass(slots=True)
class Answer:
    """An upstream's answer: ``body`` when read whole, else a :class:`Body` to read."""

    status: int
    #: As received, in order (names and values decoded as UTF-8, undecodable bytes kept).
    headers: list[tuple[str, str]]
    body: bytes | None = None
    stream: Body | None = None
    #: ``time.perf_counter()`` when the status line and headers were in.
    headers_at: float = 0.0


class Body:
    """A streamed answer's body. ``readany`` returns what has arrived (``b""`` at the end); a
    cancelled read loses nothing. ``close`` gives the connection back if the answer was read to
    its end, and closes it otherwise."""

    __slots__ = ("_conn",)

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn

    async def readany(self) -> bytes:
        conn = self._conn
        if conn is None:
            return b""
        data = await conn.read_chunk()
        if not data:
            self._conn = None
            conn.finish()
        return data

    def at_eof(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()


class _Connection(asyncio.Protocol):
    """One kept-alive connection; one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.reused = False
        # The exchange in progress.
        self._busy = False
        self._stream_reply = False
        self._streaming = False
        self._got_bytes = False
        self._got_body = False
        self._headers_done = False
        self._complete = False
        self._framed = False
        self._keep_alive = False
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._headers_at = 0.0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._decoder: Any = None
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[Answer] | None = None
        self._reader: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._last_read = 0.0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy or self._complete:
            # Bytes nobody asked for (or after the answer's end): the connection is unusable.
            self.abort()
            return
        self._got_bytes = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the upstream switched protocols"))
        except httptools.HttpParserCallbackError as exc:  # a callback below refused the answer
            cause = exc.__context__
            self._fail(cause if isinstance(cause, BadAnswer) else BadAnswer(str(exc)))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(f"the upstream's answer is not valid HTTP/1.1 ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        if not self._busy or self._complete or self._exc is not None:
            return
        if self._headers_done and not self._framed and exc is None:
            # Neither Content-Length nor chunked: the body ends where the connection does.
            self._keep_alive = False
            try:
                self.on_message_complete()
            except BadAnswer as refused:  # e.g. a compressed body cut short
                self._fail(refused)
        elif not self._got_bytes:
            self._fail(_NothingReceived())
        else:
            reason = f" ({exc})" if exc is not None else ""
            self._fail(
                UpstreamClosed(
                    f"the upstream closed the connection mid-answer{reason}",
                    answered=self._headers_done,
                )
            )

    def eof_received(self) -> bool:
        if not self._busy:  # the upstream closed an idle connection: out of the pool now
            self.abort()
        return False  # (an answer that ends with the connection completes in connection_lost)

    def pause_writing(self) -> None:  # a large request body: the transport buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._busy or self._complete:
            raise BadAnswer("the upstream sent more than one answer")
        self._headers = []
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headers_done:
            return  # a trailer after a chunked body: not passed on
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) >= MAX_HEADERS:
            raise BadAnswer("the upstream's answer has too many or too large headers")
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self._status = status
        self._headers_done = True
        self._headers_at = time.perf_counter()
        self._keep_alive = self._parser.should_keep_alive()
        content_type = ""
        for name, value in self._headers:
            low = name.lower()
            if low == "content-type":
                content_type = value
            elif low == "content-length" or low == "transfer-encoding":
                self._framed = True
            elif low == "content-encoding":
                self._decoder = _decoder(value)
        if status in (204, 304):
            self._framed = True
        if self._stream_reply or is_streamed(content_type):
            self._streaming = True
            self._resolve(
                Answer(status, self._headers, stream=Body(self), headers_at=self._headers_at)
            )

    def on_body(self, data: bytes) -> None:
        self._got_body = True
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                raise BadAnswer(
                    f"the upstream's compressed answer does not decode ({exc})"
                ) from exc
        if not data:
            return
        self._chunks.append(data)
        if self._streaming:
            self._buffered += len(data)
            if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._wake_reader()

    def on_message_complete(self) -> None:
        if not self._headers_done:
            return  # the end of an interim answer
        if self._decoder is not None:
            try:
                tail = self._decoder.flush()
            except zlib.error as exc:
                raise BadAnswer(
                    f"the upstream's compressed answer does not decode ({exc})"
                ) from exc
            if tail:
                self._chunks.append(tail)
            if self._got_body and not self._decoder.eof:
                raise BadAnswer("the upstream's compressed answer is cut short")
        self._complete = True
        self._stop_timer()
        if self._streaming:
            self._wake_reader()
            return
        body = b"".join(self._chunks)
        answer = Answer(self._status, self._headers, body=body, headers_at=self._headers_at)
        self._chunks = []
        self.finish()
        self._resolve(answer)

    # -- the exchange -------------------------------------------------------------------------

    async def exchange(
        self, head: bytes, body: bytes, *, stream_reply: bool, deadline: float
    ) -> Answer:
        transport = self.transport
        if transport is None or transport.is_closing():  # closed between the pool and here
            self.abort()
            raise _Unusable()
        self._busy, self._stream_reply = True, stream_reply
        self._streaming = self._got_bytes = self._headers_done = self._complete = False
        self._framed = self._keep_alive = self._paused = False
        self._chunks, self._buffered, self._decoder, self._exc = [], 0, None, None
        self._got_body = False
        self._waiter = waiter = self._loop.create_future()
        if len(body) < _JOIN_BELOW:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        self._arm(deadline)
        try:
            answer: Answer = await waiter
        except asyncio.CancelledError:
            if self._waiter is waiter:
                self.abort()
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                stream = waiter.result().stream
                if stream is not None:  # handed over, never to be read
                    stream.close()
            raise
        return answer

    async def read_chunk(self) -> bytes:
        while True:
            if self._chunks:
                data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
                self._chunks, self._buffered = [], 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self._last_read = self._loop.time()
                    self.transport.resume_reading()
                return data
            if self._exc is not None:
                raise self._exc
            if self._complete:
                return b""
            self._reader = reader = self._loop.create_future()
            try:
                await reader
            finally:
                self._reader = None

    def finish(self) -> None:
        """The exchange is over for its caller: back to the pool if it ended cleanly."""
        if not self._busy:
            return
        if self._complete and self._keep_alive and self._exc is None and self.transport:
            self._busy = False
            self._stop_timer()
            self._chunks, self._buffered = [], 0  # what a reader that closed early left
            if self._paused:  # (it ended while its reader was behind)
                self._paused = False
                self.transport.resume_reading()
            self._pool.release(self)
        else:
            self.abort()  # (which ends the answer for a reader still waiting on it)

    def close(self) -> None:
        """The pool is closing: an exchange in progress fails, an idle connection just closes."""
        if self._busy:
            self._fail(ConnectionError("the upstream's connection pool is closed"))
        else:
            self.abort()

    def abort(self) -> None:
        if self._busy and not self._complete and self._exc is None:
            # A reader still waiting on this answer (another task) must not wait forever.
            self._exc = ConnectionError("the proxy closed the upstream connection mid-answer")
            self._wake_reader()
        self._busy = False
        self._stop_timer()
        self._drop_transport()

    # -- internals ----------------------------------------------------------------------------

    def _resolve(self, answer: Answer) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, BadAnswer):
            exc.answered = self._headers_done
        self._exc = exc
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        else:
            self._wake_reader()
        self._drop_transport()

    def _drop_transport(self) -> None:
        """Close the socket at once (no graceful close: whatever is in it is unwanted)."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
            self._pool.forget(self)

    def _arm(self, deadline: float) -> None:
        now = self._loop.time()
        self._deadline = deadline
        self._last_read = now
        self._timer = self._loop.call_at(
            min(deadline, now + self._pool.read_timeout_s), self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        if now >= self._deadline:
            self._fail(TimeoutError("the upstream's answer took longer than its total timeout"))
            return
        if self._paused:  # our reader is slow, not the upstream
            self._last_read = now
        quiet_until = self._last_read + self._pool.read_timeout_s
        if now >= quiet_until:
            self._fail(TimeoutError("the upstream sent nothing within its first-byte timeout"))
            return
        self._timer = self._loop.call_at(min(self._deadline, quiet_until), self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _decoder(encoding: str) -> Any:
    coding = encoding.strip().lower()
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Deflate()
    if coding in ("", "identity"):
        return None
    raise BadAnswer(f"the upstream answered in a content coding it was not offered ({coding})")


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped (RFC 9110), or raw from some of them."""

    __slots__ = ("_inner", "_head")

    def __init__(self) -> None:
        self._inner: Any = None
        self._head = b""

    def decompress(self, data: bytes) -> bytes:
        if self._inner is None:
            data = self._head + data
            if len(data) < 2:  # too little to tell the two apart yet
                self._head = data
                return b""
            cmf, flg = data[0], data[1]
            wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            self._inner = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return bytes(self._inner.decompress(data))

    def flush(self) -> bytes:
        return bytes(self._inner.flush()) if self._inner is not None else b""

    @property
    def eof(self) -> bool:
        return self._inner is not None and bool(self._inner.eof)


class Pool:
    """Kept-alive connections to one upstream (``base_url``), at most ``limit`` at once."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        total_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.loop = asyncio.get_running_loop()
        self.host = url.hostname
        tls = url.scheme == "https"
        self.port = url.port or (443 if tls else 80)
        default_port = url.port is None or url.port == (443 if tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        #: What request targets start with (the base URL's path, e.g. ``/v1``).
        self.prefix = url.path.rstrip("/")
        self.ssl: ssl.SSLContext | None = None
        if tls:
            self.ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.total_timeout_s = total_timeout_s
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    @property
    def size(self) -> int:
        """Connections open or opening."""
        return len(self._open) + self._connecting

    def head(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        host: str | None = None,
    ) -> bytes:
        """The request line and headers for ``target`` (path and query, no base path)."""
        parts = [method, " ", self.prefix, target, " HTTP/1.1\r\nHost: "]
        parts += (host or self.host_header, "\r\n")
        for name, value in headers.items():
            parts += (name, ": ", value, "\r\n")
        lines = len(headers) + 3
        parts.append("Accept-Encoding: gzip, deflate\r\n")
        if body or method in ("POST", "PUT", "PATCH"):
            parts += ("Content-Length: ", str(len(body)), "\r\n")
            lines += 1
        parts.append("\r\n")
        text = "".join(parts)
        if text.count("\n") != lines + 1 or text.count("\r") != lines + 1:
            raise HeaderError("a header name or value holds a line break")
        return text.encode("utf-8", "surrogateescape")

    async def request(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        stream_reply: bool = False,
        host: str | None = None,
    ) -> Answer:
        """Send one request; the answer's body whole, or as a :class:`Body` to read and close
        (event streams, binary bodies, or every answer with ``stream_reply``). ``host``: the
        ``Host`` header, if not the base URL's."""
        head = self.head(method, target, headers, body, host=host)
        may_retry = method in IDEMPOTENT
        # One bound for the whole request, the wait for a free connection included.
        deadline = self.loop.time() + self.total_timeout_s
        while True:
            conn = await self._acquire(deadline)
            try:
                return await conn.exchange(head, body, stream_reply=stream_reply, deadline=deadline)
            except _Unusable:
                if conn.reused:  # closed while idle, nothing sent: another one, any method
                    continue
                raise UpstreamClosed(
                    "the upstream closed the connection at once", answered=False
                ) from None
            except _NothingReceived:
                if conn.reused and may_retry:
                    may_retry = False
                    continue
                raise UpstreamClosed(
                    "the upstream closed the connection without answering", answered=False
                ) from None

    async def _acquire(self, deadline: float) -> _Connection:
        while True:
            if self._closed:
                raise ConnectionError("the upstream's connection pool is closed")
            idle = self._idle
            if idle:
                now = self.loop.time()
                while idle:
                    conn = idle.pop()
                    transport = conn.transport
                    fresh = now - conn.idle_since < KEEPALIVE_S
                    if transport is not None and fresh and not transport.is_closing():
                        conn.reused = True
                        return conn
                    conn.abort()
            if self.size < self.limit:
                return await self._connect()
            waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):  # the request's whole time
                    handed = await waiter
            except (asyncio.CancelledError, TimeoutError):
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())
                else:
                    with contextlib.suppress(ValueError):  # gone if passed over already
                        self._waiters.remove(waiter)
                raise
            if handed is not None and handed.transport is not None:
                handed.reused = True
                return handed
            # A free slot (or a connection that closed on its way here): look again.

    async def _connect(self) -> _Connection:
        self._connecting += 1
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except BaseException:
            self._connecting -= 1
            self._pass_on(None)  # a slot is free
            raise
        self._connecting -= 1
        if self._closed or conn.transport is None:
            conn.abort()
            self._pass_on(None)  # its slot
            raise ConnectionError(
                "the upstream's connection pool is closed"
                if self._closed
                else "the upstream closed the connection at once"
            )
        self._open.add(conn)
        conn.reused = False
        return conn

    def release(self, conn: _Connection) -> None:
        """A connection whose exchange ended cleanly: to a waiting request, or idle."""
        if self._closed:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self._pass_on(conn)

    def forget(self, conn: _Connection) -> None:
        """A connection closed: its slot is free."""
        if conn in self._open:
            self._open.discard(conn)
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)
            self._pass_on(None)

    def _pass_on(self, conn: _Connection | None) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def close(self) -> None:
        """Close every connection; requests in flight fail, new ones are refused."""
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionError("the upstream's connection pool is closed"))
        self._waiters.clear()
