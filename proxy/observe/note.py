"""The request's :class:`Note`: what the stages decided, written as they go, read once at the end.

The HTTP door's observe middleware opens a note per request (:func:`open_note`); a
:class:`~proxy.call.Call` built while it is open carries it (``call.note``), and copies of the call
share it. Calls built elsewhere (job worker, batch runner) get a note of their own that nobody
reads unless their door does.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import time

__all__ = ["Note", "RequestIds", "close_note", "current_note", "open_note", "request_id_from"]

_CURRENT: contextvars.ContextVar[Note | None] = contextvars.ContextVar("note", default=None)

#: A client's ``X-Request-ID`` is kept when it is 1..128 visible ASCII characters.
MAX_REQUEST_ID = 128


class Note:
    """One request's record; stages set a field each, the observe layer reads them all."""

    __slots__ = (
        "request_id",
        "start",
        "model",
        "upstream",
        "upstream_s",
        "upstream_status",
        "ttfb_s",
        "batch",
        "body",
    )

    def __init__(self, request_id: str = "", start: float = 0.0) -> None:
        self.request_id = request_id
        #: ``time.perf_counter()`` when the request arrived.
        self.start = start
        self.model: str | None = None
        self.upstream: str | None = None
        #: Seconds until the upstream's answer started (headers), when one was asked.
        self.upstream_s: float | None = None
        self.upstream_status: int | None = None
        #: Seconds until the first byte of a streamed answer was written to the client.
        self.ttfb_s: float | None = None
        #: Requests in the merged upstream call this one rode (micro-batching), else 0.
        self.batch = 0
        #: The request body, kept only with ``server.log_bodies``.
        self.body = b""

    def answered(self, upstream: str, status: int, started: float, *, at: float = 0.0) -> None:
        """The upstream answered (headers in, at ``time.perf_counter()`` ``at``, default now):
        set by :meth:`Upstream.send`."""
        self.upstream = upstream
        self.upstream_status = status
        self.upstream_s = (at or time.perf_counter()) - started

    def first_byte(self) -> None:
        """A chunk of a streamed answer was written; only the first one counts."""
        if self.ttfb_s is None:
            self.ttfb_s = time.perf_counter() - self.start


def current_note() -> Note:
    """The open request's note, or a fresh one outside a request (the ``Call`` default)."""
    note = _CURRENT.get()
    return Note() if note is None else note


def open_note(note: Note) -> contextvars.Token[Note | None]:
    return _CURRENT.set(note)


def close_note(token: contextvars.Token[Note | None]) -> None:
    _CURRENT.reset(token)


class RequestIds:
    """``X-Request-ID`` values: the client's when sane, else ``<random prefix>-<counter>``
    (unique per process without a random draw per request)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"


def request_id_from(value: str | None) -> str | None:
    """``value`` if it is 1..128 visible ASCII characters (no space, no control), else ``None``."""
    if not value or len(value) > MAX_REQUEST_ID or not value.isascii() or not value.isprintable():
        return None
    return None if " " in value else value
