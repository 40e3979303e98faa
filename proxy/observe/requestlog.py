"""The request log: one line per request, JSON (orjson) or text, written once per loop turn.

Lines bypass :mod:`logging` (its record and formatting path costs more than the rest of a cache
hit): they are built here, gathered, and written to stderr in one ``write`` when the event loop
gets round to it. Fields never hold a key (the tenant is its hash), and query strings keep their
parameter names only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["RequestLog", "query_names"]

#: Writes up to this size to a pipe are never interleaved with other processes' writes.
_ATOMIC_BYTES = select.PIPE_BUF if hasattr(select, "PIPE_BUF") else 512
#: Bodies logged with ``server.log_bodies`` are cut at this many bytes.
MAX_LOGGED_BODY_BYTES = 16 * 1024
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def query_names(raw_query: str) -> str:
    """``a=1&key=secret`` -> ``a=&key=``: which parameters, never their values."""
    if not raw_query:
        return ""
    return "&".join(part.partition("=")[0] + "=" for part in raw_query.split("&") if part)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Clock:
    """ISO 8601 UTC time with milliseconds; the part up to the second is formatted once a second,
    and a whole stamp once a millisecond (lines come in bursts)."""

    __slots__ = ("_second", "_prefix", "_milli", "_stamp")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""
        self._milli = -1
        self._stamp = ""

    def now(self) -> str:
        milli = int(time.time() * 1000)
        if milli == self._milli:
            return self._stamp
        second, ms = divmod(milli, 1000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._milli = milli
        self._stamp = stamp = f"{self._prefix}.{ms:03d}Z"
        return stamp


class RequestLog:
    """Formats request lines and writes them to ``fd`` (stderr) in batches.

    ``fmt`` is ``json`` or ``text``; ``level`` is the ``logging`` level below which lines are
    dropped (an answer of 500 or more is logged at ``error``, the rest at ``info``).
    """

    def __init__(self, *, fmt: str, level: int, fd: int = 2) -> None:
        self.json = fmt == "json"
        self.level = level
        self.fd = fd
        #: Where a batch of lines goes; tests may replace it.
        self.sink: Callable[[bytes], None] = self.write
        self._clock = _Clock()
        self._pending: list[bytes] = []
        self._scheduled = False

    def enabled_for(self, status: int) -> bool:
        return (logging.ERROR if status >= 500 else logging.INFO) >= self.level

    def emit(self, fields: dict[str, Any]) -> None:
        """Queue one line, written when the event loop next gets round to it; ``fields`` gets
        ``time`` and ``level`` in front."""
        level = "error" if fields.get("status", 0) >= 500 else "info"
        self.add({"time": self._clock.now(), "level": level, **fields})
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a test calling emit directly): write now
                self.flush()

    def now(self) -> str:
        """The ``time`` field of a line made now."""
        return self._clock.now()

    def add(self, line: dict[str, Any]) -> None:
        """Queue one line that starts with its ``time`` and ``level`` already, for the caller's
        next :meth:`flush`."""
        self._pending.append(orjson.dumps(line, option=_NEWLINE) if self.json else _text(line))

    def flush(self) -> None:
        """Write what is pending, in pieces of whole lines of at most ``PIPE_BUF`` bytes: a pipe
        keeps such writes whole, so worker processes sharing stderr never split a line."""
        self._scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        piece: list[bytes] = []
        size = 0
        for line in pending:
            if piece and size + len(line) > _ATOMIC_BYTES:
                self.sink(b"".join(piece))
                piece, size = [], 0
            piece.append(line)
            size += len(line)
        if piece:
            self.sink(b"".join(piece))

    def write(self, data: bytes) -> None:
        """The default sink: ``data`` to ``fd``, all of it."""
        try:
            _write_all(self.fd, data)
        except OSError:  # stderr closed or full: the request must not fail for its log line
            pass


def _text(line: dict[str, Any]) -> bytes:
    """``time LEVEL id METHOD route?query status latency key=value...``, readable in a terminal."""
    head = (
        f"{line['time']} {line['level'].upper():5} {line['request_id']} {line['method']} "
        f"{line['route']}{'?' + line['query'] if line.get('query') else ''} {line['status']} "
        f"{line['latency_ms']}ms"
    )
    skip = {"time", "level", "request_id", "method", "route", "query", "status", "latency_ms"}
    rest = " ".join(
        f"{k}={_quoted(v) if isinstance(v, str) else v}"
        for k, v in line.items()
        if k not in skip and v is not None and v != 0
    )
    return f"{head} {rest}\n".encode() if rest else f"{head}\n".encode()


def _quoted(value: str) -> str:
    return value if value.isprintable() and " " not in value else orjson.dumps(value).decode()
