"""The worker pool of one replica: claim due jobs, run them through the pipeline, record once.

One dispatcher task claims up to ``jobs.concurrency`` jobs; each runs in a task of its own,
beside a heartbeat that renews its lease and notices a cancel asked for on any replica.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..auth import Identity
from ..call import Call, Next, Reply
from ..config import JobsSettings
from ..errors import ProxyError, StoreUnavailable, UpstreamError
from ..handlers.proxy import ProxyDoor
from ..metrics import Metrics
from ..redis_client import raise_if_cancelled
from .dispatch import Dispatcher
from .limits import RateLimiter, estimate_tokens
from .models import CANCELLED, Job, JobStatus
from .store import JobStore, Lease

__all__ = ["Outcome", "Worker", "retry_after_s"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429})
#: Longest ``Retry-After`` honoured: a broken upstream must not park a job for days.
MAX_RETRY_AFTER_S = 3600.0


@dataclass
class Outcome:
    kind: Literal["completed", "failed", "retry"]
    result: dict[str, Any] = field(default_factory=dict)
    retry_after_s: float = 0.0
    #: The HTTP status of the attempt: the upstream's, or the proxy's own error's.
    status: int | None = None

    def last_error(self) -> dict[str, Any]:
        """``{status, code, message}`` of a failed attempt, for the job while it waits."""
        error = self.result.get("error", {})
        return {"status": self.status, "code": error.get("code"), "message": error.get("message")}


def retry_after_s(headers: Mapping[str, str]) -> float:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 0.001), ("Retry-After", 1.0)):
        value = headers.get(name)
        if not value:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    return 0.0


def _is_json(mime: str) -> bool:
    return not mime or mime == "application/json" or mime.endswith("+json")


def response_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """How a job keeps an upstream's answer: unchanged, whatever its bytes.

    JSON as ``{"body": <the JSON value>}``; text (and JSON that does not parse) as a string
    ``body`` with its ``content_type``; anything else (audio, images) as ``body_base64`` with its
    ``content_type``, so the bytes come back exactly.
    """
    content_type = content_type or ""
    mime = content_type.partition(";")[0].strip().lower()
    if _is_json(mime):
        try:
            return {"body": orjson.loads(body)}
        except orjson.JSONDecodeError:
            pass
    if _is_json(mime) or mime.startswith("text/"):
        try:
            return {"body": body.decode("utf-8"), "content_type": content_type}
        except UnicodeDecodeError:
            pass
    return {"body_base64": base64.b64encode(body).decode("ascii"), "content_type": content_type}


def _upstream_error(status: int, body: bytes, content_type: str | None) -> dict[str, Any]:
    """The error object of a failed attempt, with the upstream's response."""
    kept = response_body(body, content_type)
    parsed = kept.get("body")
    inner = parsed.get("error") if isinstance(parsed, dict) else None
    inner = inner if isinstance(inner, dict) else {}
    return {
        "message": str(inner.get("message") or f"upstream answered {status}"),
        "type": str(inner.get("type") or "upstream_error"),
        "code": inner.get("code"),
        "response": {"status_code": status, **kept},
    }


def classify(reply: Reply, body: bytes) -> Outcome:
    content_type = reply.headers.get("Content-Type")
    if reply.ok:
        response = {"status_code": reply.status, **response_body(body, content_type)}
        return Outcome("completed", {"response": response})
    error = {"error": _upstream_error(reply.status, body, content_type)}
    if reply.status in RETRY_STATUSES or reply.status >= 500:
        return Outcome("retry", error, retry_after_s(reply.headers), reply.status)
    return Outcome("failed", error, status=reply.status)


def _proxy_error(exc: ProxyError) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.type, "code": exc.code}}


class Worker(Dispatcher):
    def __init__(
        self,
        *,
        store: JobStore,
        door: ProxyDoor,
        pipeline: Next,
        settings: JobsSettings,
        limiter: RateLimiter,
        metrics: Metrics,
        on_finished: Callable[[Job], None],
    ) -> None:
        self.store = store
        self.door = door
        self.pipeline = pipeline
        self.settings = settings
        self.limiter = limiter
        self.metrics = metrics
        self.on_finished = on_finished
        self.owner = secrets.token_hex(4)
        super().__init__()
        self._work: dict[str, asyncio.Task[Outcome]] = {}
        self._cancel_asked: set[str] = set()
        self._heartbeat_s = min(settings.lease_s / 3, 1.0)

    def cancel_local(self, job_id: str) -> None:
        """Abort the job's upstream call at once if it runs in this replica."""
        work = self._work.get(job_id)
        if work is not None:
            self._cancel_asked.add(job_id)
            work.cancel()

    async def _dispatch_once(self) -> None:
        free = self.settings.concurrency - len(self._tasks)
        self._changed.clear()
        if free <= 0:
            await self._changed.wait()
            return
        now = time.time()
        try:
            jobs, next_due = await self.store.claim(
                now=now, limit=free, lease_s=self.settings.lease_s, owner=self.owner
            )
        except StoreUnavailable:
            raise_if_cancelled()
            if self._stopping:
                return
            log.warning("job store unavailable; retrying in %ss", self.settings.poll_interval_s)
            await asyncio.sleep(self.settings.poll_interval_s)
            return
        for job in jobs:
            self.metrics.jobs.labels(status="in_progress").inc()
            if job.attempts == 1:
                self.metrics.job_wait_seconds.observe(max(0.0, now - job.score))
            self._start(self._run(job))
        if len(jobs) == free:
            return
        timeout = self.settings.poll_interval_s
        if next_due is not None:
            timeout = min(timeout, max(0.0, next_due - time.time()))
        await self._wait_for_change(timeout)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        super()._task_done(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed", exc_info=task.exception())

    async def _run(self, job: Job) -> None:
        work = asyncio.create_task(self._attempt(job))
        self._work[job.id] = work
        try:
            lease = await self._supervise(job, work)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(job.id, job.token)  # else: the lease expires
            raise
        finally:
            self._work.pop(job.id, None)
        if lease == "lost":
            return
        if lease == "cancel" or job.id in self._cancel_asked or work.cancelled():
            self._cancel_asked.discard(job.id)
            outcome = Outcome("failed", CANCELLED)
            await self._record(job, outcome, status="cancelled")
            return
        await self._record(job, work.result())

    async def _supervise(self, job: Job, work: asyncio.Task[Outcome]) -> Lease:
        """Renew the lease until the work is done; stop the work if the lease is lost or a
        cancel was asked for."""
        while True:
            done, _ = await asyncio.wait({work}, timeout=self._heartbeat_s)
            if done:
                return "held"
            until = time.time() + self.settings.lease_s
            try:
                lease = await self.store.renew(job.id, job.token, until=until)
            except StoreUnavailable:
                raise_if_cancelled()  # a cancel can surface from inside Redis as a failure
                continue  # keep working; if Redis stays away the lease lapses and that is fine
            if lease != "held":
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return lease

    async def _attempt(self, job: Job) -> Outcome:
        if job.attempts > self.settings.max_attempts:
            error = {"message": "the job was attempted too often", "type": "job_error"}
            return Outcome("failed", {"error": {**error, "code": "max_attempts"}})
        try:
            call = self._call(job)
        except ProxyError as exc:
            return Outcome("failed", _proxy_error(exc))
        assert call.json is not None
        await self.limiter.acquire(call.upstream.name, estimate_tokens(call.json, call.body))
        try:
            reply = await self.pipeline(call)
            body = await reply.read()
        except UpstreamError as exc:
            return Outcome("retry", _proxy_error(exc), status=exc.status)
        except ProxyError as exc:
            return Outcome("failed", _proxy_error(exc))
        return classify(reply, body)

    def _call(self, job: Job) -> Call:
        identity = Identity(tenant=job.tenant, credential=job.credential)
        data = orjson.loads(job.body)
        call = self.door.build_call(
            identity=identity,
            method="POST",
            path=job.endpoint,
            headers=job.headers,
            body=job.body,
            data=data,
        )
        call.note.request_id = job.headers.get("X-Request-ID", "")
        return call

    def backoff_s(self, attempts: int) -> float:
        """Exponential backoff with jitter (half fixed, half random)."""
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempts - 1))
        return random.uniform(cap / 2, cap)

    async def _record(self, job: Job, outcome: Outcome, *, status: JobStatus | None = None) -> None:
        """Store the outcome; while Redis is away, keep trying for as long as the lease lasts."""
        deadline = time.monotonic() + self.settings.lease_s
        while True:
            try:
                await self._store_outcome(job, outcome, status)
                return
            except StoreUnavailable:
                raise_if_cancelled()
                if time.monotonic() > deadline:
                    log.warning("result of %s not recorded: store down; it will run again", job.id)
                    return
                await asyncio.sleep(min(1.0, self.settings.poll_interval_s))

    async def _store_outcome(self, job: Job, outcome: Outcome, status: JobStatus | None) -> None:
        if outcome.kind == "retry" and job.attempts < self.settings.max_attempts:
            delay = max(min(outcome.retry_after_s, MAX_RETRY_AFTER_S), self.backoff_s(job.attempts))
            run_at = time.time() + delay
            last_error = outcome.last_error()
            if await self.store.retry(job.id, job.token, run_at=run_at, last_error=last_error):
                self.metrics.jobs.labels(status="retried").inc()
            return
        if status is None:
            status = "completed" if outcome.kind == "completed" else "failed"
        finished = await self.store.finish(
            job.id, job.token, status=status, result=outcome.result, now=time.time()
        )
        if finished is not None:
            self.metrics.jobs.labels(status=status).inc()
            self.on_finished(finished)
