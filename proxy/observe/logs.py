"""Process logging: one handler on stderr, JSON or text, and repeated warnings rate-limited.

``server.log_format: auto`` is JSON when stderr is not a terminal (a container, a file, a log
shipper) and text when a person is watching.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import IO

import orjson

__all__ = ["JsonFormatter", "RateLimitFilter", "configure_logging", "resolve_format"]

#: At most one line per cause (logger and message template) in this many seconds.
RATE_LIMIT_S = 30.0
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def resolve_format(fmt: str, stream: IO[str] | None = None) -> str:
    """``auto`` -> ``json`` unless ``stream`` (stderr) is a terminal."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message"}`` (+ ``exc`` with a traceback), one per line;
    ``pid``: with the process id before the message (a supervisor's workers share stderr)."""

    def __init__(self, *, pid: bool = False) -> None:
        super().__init__()
        self.pid = pid

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.pid:
            line["pid"] = record.process
        line["message"] = record.getMessage()
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


#: ``log.error(..., extra=ALWAYS)``: never rate-limited (see :class:`RateLimitFilter`).
ALWAYS = {"always": True}


class RateLimitFilter(logging.Filter):
    """Lets through at most one WARNING-or-worse record per cause per ``interval_s``.

    A cause is the logger and the message *template* (``"job store unavailable; retrying in
    %ss"``), so a flood of the same failure is one line per interval; the next line that passes
    says how many were suppressed since the last one. Lower levels pass untouched, and so does a
    record logged with ``extra=ALWAYS``: the answer to an operator's own action (a reload), which
    must show every time.
    """

    def __init__(
        self, *, interval_s: float = RATE_LIMIT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        #: cause -> (time of the last line let through, records suppressed since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "always", False):
            return True
        cause = (record.name, str(record.msg))
        now = self._clock()
        last = self._seen.get(cause)
        if last is not None and now - last[0] < self.interval_s:
            self._seen[cause] = (last[0], last[1] + 1)
            return False
        if len(self._seen) >= 1024:  # many causes: forget the old ones rather than grow
            self._seen.clear()
        self._seen[cause] = (now, 0)
        if last is not None and last[1]:
            quiet_s = now - last[0]
            record.msg = f"{record.msg} ({last[1]} more like this in the last {quiet_s:.0f} s)"
        return True


def configure_logging(
    *, fmt: str, level: str, stream: IO[str] | None = None, pid: bool = False
) -> logging.Handler:
    """Replace the root logger's handlers with one on ``stream`` (stderr) in ``fmt``; ``pid``:
    each line names its process (a supervisor's worker: ``INFO proxy [4242] ...``)."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if resolve_format(fmt, stream) == "json":
        handler.setFormatter(JsonFormatter(pid=pid))
    else:
        text = _TEXT_FORMAT.replace(" %(message)s", " [%(process)d] %(message)s") if pid else None
        handler.setFormatter(logging.Formatter(text or _TEXT_FORMAT))
    handler.addFilter(RateLimitFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The request log replaces aiohttp's access log.
    logging.getLogger("aiohttp.access").disabled = True
    return handler
