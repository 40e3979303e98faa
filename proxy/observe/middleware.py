"""The one place a request becomes its log line and its metrics.

:class:`Observer` opens a :class:`~.note.Note` when a request arrives (its ``X-Request-ID``), lets
the stages fill it, and at the end writes the request log line, counts the request and keeps the
last errors for ``/stats``. Probes, scrapes and the dashboard itself are not counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..call import Call, Next, Reply
from ..config import Settings
from ..keys import IDENTITY
from ..metrics import Metrics
from .labels import ModelLabels, RouteLabels
from .logs import resolve_format
from .note import MAX_REQUEST_ID, Note, RequestIds, close_note, open_note, request_id_from
from .requestlog import MAX_LOGGED_BODY_BYTES, RequestLog, query_names
from .stats import Stats
from .tally import Tally

__all__ = ["NOTE", "QUIET_PATHS", "Observer", "Recent", "build_observer"]

log = logging.getLogger(__name__)

#: Neither logged nor counted: health probes, scrapes, the dashboard and its data.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/stats", "/dashboard"})
#: Per request: its note.
NOTE: web.RequestKey[Note] = web.RequestKey("note")
#: How many recent errors ``/stats`` shows.
RECENT_ERRORS = 20

_TEXTUAL = ("application/json", "text/")
_CLIENT_GONE = 499  # nginx's code: the client closed the connection before the answer


class Recent:
    """What ``/stats`` remembers beyond the metrics: the last errors and the totals its rates
    are measured from. One per process, as the metrics are: a reload's new app keeps it."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.errors: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_ERRORS)


class Observer:
    """Request ids, the request log and the per-request metrics (``app[OBSERVER]``)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        request_log: RequestLog | None,
        recent: Recent | None = None,
    ) -> None:
        server = settings.server
        self.metrics = metrics
        self.log = request_log
        self.count = server.request_metrics
        self.log_bodies = server.log_bodies
        self.ids = RequestIds()
        recent = Recent() if recent is None else recent
        self.stats = recent.stats
        self.routes = RouteLabels()
        self.models = ModelLabels(settings)
        self.recent_errors = recent.errors
        self._requests: dict[tuple[str, ...], Any] = {}
        self._durations: dict[str, Any] = {}
        self._ttfb: dict[str, Any] = {}
        self._upstream: dict[str, Any] = {}
        self._in_flight = metrics.in_flight
        self._saved_cache = metrics.calls_saved.labels(cause="cache")
        self._saved_dedup = metrics.calls_saved.labels(cause="dedup")
        #: Requests that ended this loop turn: (request, note, response, status, end time, bytes
        #: of the answer's body; counted at the end, before aiohttp writes a whole answer).
        self._seen: list[tuple[web.Request, Note, web.StreamResponse | None, int, float, int]] = []
        self._scheduled = False
        self._tally = Tally()
        #: Requests begun less those ended since the last drain (for the in-flight gauge).
        self._live_change = 0

    # --- the HTTP side ---------------------------------------------------------------------

    def middleware(self) -> Middleware:
        @web.middleware
        async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.path in QUIET_PATHS:
                return await handler(request)
            note = Note(self._request_id(request), time.perf_counter())
            request[NOTE] = note
            token = open_note(note)
            if self.count:
                self._live_change += 1
                self._schedule_drain()  # the gauge moves by the next turn even if none ends
            response: web.StreamResponse | None = None
            status = _CLIENT_GONE
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:  # a redirect or an unhandled refusal
                status = exc.status
                raise
            finally:
                close_note(token)
                if self.count:
                    self._live_change -= 1
                sent = _bytes_out(response) if self.log is not None else 0
                self._seen.append((request, note, response, status, time.perf_counter(), sent))
                self._schedule_drain()

        return observe

    def _schedule_drain(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    def drain(self) -> None:
        """Log and count the requests that ended since the last call, together, and move the
        in-flight gauge by the requests that began or ended.

        Called once per event-loop turn: the lines and counts of a turn's requests are made in
        one go, with the code and data warm, instead of each in the middle of its own request
        (it measured cheaper), and the lines are written in one ``write``. Nothing of it happens
        later than the next turn, before any new request is handled.
        """
        self._scheduled = False
        seen, self._seen = self._seen, []
        for request, note, response, status, ended, sent in seen:
            try:
                self.finish(request, note, response, status, ended - note.start, sent)
            except Exception:  # the outermost place: seeing a request never breaks it
                log.exception("request log or metrics failed on %s", request.path)
        try:
            self._tally.fold()
            if self._live_change:
                # One gauge change per turn for the requests that began and ended in it.
                self._in_flight.inc(self._live_change)
                self._live_change = 0
            if self.log is not None:
                self.log.flush()
        except Exception:  # as above
            log.exception("request log or metrics failed")

    def _request_id(self, request: web.Request) -> str:
        given = request.headers.get("X-Request-ID")
        if given is not None and len(given) <= MAX_REQUEST_ID:
            sane = request_id_from(given)
            if sane is not None:
                return sane
        return self.ids.new()

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer names its request; an upstream's own id is kept under another name."""
        note = request.get(NOTE)
        if note is None:
            return
        upstream_id = response.headers.get("X-Request-ID")
        if upstream_id is not None and upstream_id != note.request_id:
            response.headers["X-Upstream-Request-ID"] = upstream_id
        response.headers["X-Request-ID"] = note.request_id

    def finish(
        self,
        request: web.Request,
        note: Note,
        response: web.StreamResponse | None,
        status: int,
        latency: float,
        sent: int = 0,
    ) -> None:
        route = self.routes.of(request)
        headers = response.headers if response is not None else None
        cache = headers.get("X-Cache") if headers is not None else None
        if self.count:
            self._count(route, note, status, cache, latency)
        if status >= 400:
            self._remember_error(request, note, route, status, response)
        if route == "/v1/models" and status == 200 and isinstance(response, web.Response):
            self._learn_models(response)
        if self.log is not None and self.log.enabled_for(status):
            fields = self._fields(request, note, status, cache, latency, response, sent)
            if self.log_bodies:
                _add_bodies(fields, note, response)
            self.log.add(fields)

    def _count(
        self, route: str, note: Note, status: int, cache: str | None, latency: float
    ) -> None:
        model = self.models.of(note.model)
        key = (route, note.upstream or "none", model, str(status), cache or "none")
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.metrics.requests.labels(*key)
        tally = self._tally
        tally.inc(child)
        tally.observe(_child(self._durations, self.metrics.request_seconds, route), latency)
        if note.upstream_s is not None and note.upstream is not None:
            upstream = _child(self._upstream, self.metrics.upstream_seconds, note.upstream)
            tally.observe(upstream, note.upstream_s)
        if note.ttfb_s is not None:
            tally.observe(_child(self._ttfb, self.metrics.ttfb_seconds, route), note.ttfb_s)

    def _fields(
        self,
        request: web.Request,
        note: Note,
        status: int,
        cache: str | None,
        latency: float,
        response: web.StreamResponse | None,
        sent: int,
    ) -> dict[str, Any]:
        """The request's log line, ``time`` and ``level`` first."""
        assert self.log is not None
        identity = request.get(IDENTITY)
        coalesced = response.headers.get("X-Coalesced") if response is not None else None
        return {
            "time": self.log.now(),
            "level": "error" if status >= 500 else "info",
            "request_id": note.request_id,
            "tenant": identity.tenant if identity is not None else None,
            "method": request.method,
            "route": request.path,
            "query": query_names(request.rel_url.raw_query_string),
            "model": note.model,
            "upstream": note.upstream,
            "status": status,
            "cache": cache,
            "coalesced": int(coalesced)
            if coalesced and coalesced.isdigit() and not note.batch
            else 0,
            "batch": note.batch,
            "latency_ms": round(latency * 1000, 2),
            "upstream_ms": _ms(note.upstream_s),
            "ttfb_ms": _ms(note.ttfb_s),
            "bytes_in": request.content.total_bytes,
            "bytes_out": sent,
            "error": _error_code(response) if status >= 400 else None,
        }

    def _remember_error(
        self,
        request: web.Request,
        note: Note,
        route: str,
        status: int,
        response: web.StreamResponse | None,
    ) -> None:
        self.recent_errors.append(
            {
                "time": time.time(),
                "request_id": note.request_id,
                "method": request.method,
                "route": route,
                "status": status,
                "error": _error_code(response),
                "upstream": note.upstream,
            }
        )

    def _learn_models(self, response: web.Response) -> None:
        body = response.body
        if not isinstance(body, bytes):
            return
        try:
            data = orjson.loads(body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if isinstance(data, list):
            self.models.learn(
                m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
            )

    # --- the pipeline side -----------------------------------------------------------------

    def wrap(self, next_stage: Next) -> Next:
        """The outermost stage: what was routed, and which upstream calls were saved."""
        saved_cache, saved_dedup = self._saved_cache, self._saved_dedup
        log_bodies = self.log_bodies

        async def observed(call: Call) -> Reply:
            note = call.note
            note.model = call.model
            note.upstream = call.upstream.name
            if log_bodies:
                note.body = call.body
            reply = await next_stage(call)
            if reply.follower:
                saved_dedup.inc()
            elif reply.headers.get("X-Cache") == "HIT":
                saved_cache.inc()
            return reply

        return observed


def _child(memo: dict[str, Any], family: Any, label: str) -> Any:
    child = memo.get(label)
    if child is None:
        child = memo[label] = family.labels(label)
    return child


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _bytes_out(response: web.StreamResponse | None) -> int:
    if response is None:
        return 0
    if isinstance(response, web.Response) and not response.prepared:
        body = response.body
        return len(body) if isinstance(body, bytes) else 0
    return response.body_length


def _error_code(response: web.StreamResponse | None) -> str | None:
    """The ``error.code`` (or ``type``) of an OpenAI-shaped error body, if there is one."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return None
    try:
        error = orjson.loads(response.body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    code = error.get("code") or error.get("type")
    return str(code)[:64] if code is not None else None


def _add_bodies(fields: dict[str, Any], note: Note, response: web.StreamResponse | None) -> None:
    """``server.log_bodies``: the JSON request body and an unstreamed JSON or text answer."""
    if note.body:
        fields["request_body"] = _cut(note.body)
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        if response.content_type.startswith(_TEXTUAL):
            fields["response_body"] = _cut(response.body)


def _cut(body: bytes) -> str:
    return body[:MAX_LOGGED_BODY_BYTES].decode("utf-8", "replace")


def build_observer(
    settings: Settings, metrics: Metrics, *, recent: Recent | None = None
) -> Observer:
    """The app's :class:`Observer`, with a request log when ``server.access_log``."""
    server = settings.server
    request_log = None
    if server.access_log:
        level = logging.getLevelName(server.log_level.upper())
        request_log = RequestLog(fmt=resolve_format(server.log_format), level=level)
    return Observer(settings, metrics, request_log=request_log, recent=recent)
