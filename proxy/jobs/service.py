"""The job service: submission rules, ownership, and the lifetimes of the workers."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..auth import Identity
from ..cache.keys import canonical_body
from ..call import Call
from ..config import JobsSettings
from ..errors import InvalidRequest, NotFound, PayloadTooLarge, RateLimited
from ..metrics import Metrics
from .models import TERMINAL, Job, new_job_id
from .store import JobStore
from .webhooks import WebhookSender, callback_allowed
from .worker import Worker

__all__ = ["JobService", "Submission", "check_metadata"]

log = logging.getLogger(__name__)

_MAX_METADATA = 16
#: How far ahead ``run_after`` may be: beyond, it is a mistake (milliseconds sent for seconds).
_MAX_RUN_AFTER_AHEAD_S = 366 * 86400


@dataclass(frozen=True, slots=True)
class Submission:
    """What a client asked for, already validated as a call (``call``)."""

    call: Call
    run_after: int | None = None
    callback_url: str | None = None
    metadata: Mapping[str, str] | None = None
    idempotency_key: str | None = None


def check_options(body: Mapping[str, Any], settings: JobsSettings) -> dict[str, Any]:
    """``run_after``, ``callback_url`` and ``metadata`` of a ``POST /v1/jobs`` body."""
    run_after = body.get("run_after")
    if run_after is not None and (
        isinstance(run_after, bool)
        or not isinstance(run_after, int | float)
        or not 0 <= run_after <= time.time() + _MAX_RUN_AFTER_AHEAD_S
    ):
        raise InvalidRequest(
            "'run_after' must be a unix time in seconds, at most a year ahead", param="run_after"
        )
    callback = body.get("callback_url")
    if callback is not None:
        _check_callback(callback, settings)
    return {
        "run_after": None if run_after is None else int(run_after),
        "callback_url": callback,
        "metadata": check_metadata(body.get("metadata")) or {},
    }


def _check_callback(callback: object, settings: JobsSettings) -> None:
    """Refuse a ``callback_url`` naming everything the operator must change, not one at a time."""
    allowed = isinstance(callback, str) and callback_allowed(callback, settings.callback_allow)
    missing = [] if allowed or settings.callback_allow else ["jobs.callback_allow"]
    if settings.webhook_secret is None:
        missing.append("jobs.webhook_secret")
    if missing:
        raise InvalidRequest(
            "Webhooks are not configured on this proxy: set " + " and ".join(missing),
            param="callback_url",
            code="callback_not_allowed",
        )
    if not allowed:
        raise InvalidRequest(
            "'callback_url' must be an http(s) URL on a host allowed by jobs.callback_allow",
            param="callback_url",
            code="callback_not_allowed",
        )


def check_metadata(value: Any) -> dict[str, str] | None:
    """A job's or batch's ``metadata`` (OpenAI's rule: at most 16 short string pairs)."""
    if value is None:
        return None
    ok = isinstance(value, dict) and len(value) <= _MAX_METADATA
    ok = ok and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
        for k, v in value.items()
    )
    if not ok:
        raise InvalidRequest(
            f"'metadata' must map at most {_MAX_METADATA} keys (<= 64 chars) to strings "
            "(<= 512 chars)",
            param="metadata",
        )
    return dict(value)


def fingerprint(call: Call) -> str:
    """What an idempotency key promises: the same endpoint and the same request."""
    assert call.json is not None
    canonical = canonical_body(call.json, frozenset())
    return hashlib.sha256(call.path.encode() + b"\x00" + canonical).hexdigest()


class JobService:
    def __init__(
        self,
        *,
        store: JobStore,
        worker: Worker,
        settings: JobsSettings,
        metrics: Metrics,
        webhooks: WebhookSender | None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.settings = settings
        self.metrics = metrics
        self.webhooks = webhooks
        worker.on_finished = self._finished
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self.worker.run(), name="jobs-dispatcher")

    async def halt(self) -> None:
        """Take no more jobs; running ones go back to the queue (for another worker or
        generation to take). The store stays open: submissions and reads still work."""
        if self._task is not None:
            # The flag as well as the cancel: a cancellation that lands inside a Redis call can
            # come back as a connection error, which the dispatcher survives by design.
            self.worker.stop()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def stop(self) -> None:
        await self.halt()
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.store.close()

    def _finished(self, job: Job) -> None:
        if job.callback_url and self.webhooks is not None:
            self.webhooks.send(job.callback_url, job.public())

    async def submit(self, sub: Submission) -> tuple[Job, bool]:
        """Store the job (``(job, True)``), or find the one an idempotency key made before."""
        call = sub.call
        if call.stream:
            raise InvalidRequest(
                "Jobs are not streamed: leave out 'stream: true' (the result is stored whole)",
                param="stream",
                code="stream_not_supported",
            )
        if len(call.body) > self.settings.max_body_bytes:
            raise PayloadTooLarge(
                f"A job's request body may be at most {self.settings.max_body_bytes} bytes"
            )
        now = time.time()
        job = Job(
            id=new_job_id(),
            tenant=call.tenant,
            endpoint=call.path,
            body=call.body,
            created_at=now,
            score=max(float(sub.run_after or 0), now),
            run_after=sub.run_after,
            metadata=dict(sub.metadata or {}),
            callback_url=sub.callback_url,
            headers={str(k): str(v) for k, v in call.headers.items()} | _request_id(call),
            credential=call.credential,
            fingerprint=fingerprint(call),
        )
        out = await self.store.submit(
            job,
            idempotency_key=sub.idempotency_key,
            idempotency_ttl_s=self.settings.idempotency_ttl_s,
            max_active=self.settings.max_queued_per_tenant,
        )
        if out is None:
            raise RateLimited(
                f"Too many unfinished jobs: at most {self.settings.max_queued_per_tenant} "
                "queued or running jobs per API key",
                code="too_many_jobs",
            )
        stored, created = out
        if created:
            self.metrics.jobs.labels(status="queued").inc()
            self.worker.wake()
        elif stored.fingerprint != job.fingerprint:
            raise InvalidRequest(
                "This Idempotency-Key was already used for a different request",
                code="idempotency_key_reused",
            )
        return stored, created

    async def get(self, identity: Identity, job_id: str) -> Job:
        job = await self.store.get(job_id) if job_id.startswith("job_") else None
        if job is None or job.tenant != identity.tenant:
            raise NotFound(f"No job found with id '{job_id}'", param="id")
        return job

    async def page(
        self, identity: Identity, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[Job], bool]:
        return await self.store.page(identity.tenant, limit=limit, after=after, status=status)

    async def cancel(self, identity: Identity, job_id: str) -> Job:
        """Cancel a queued job; abort a running one and wait (briefly) until it has stopped."""
        job = await self.get(identity, job_id)
        if job.finished:
            return job
        changed = await self.store.cancel(job_id, now=time.time())
        if changed is None:
            raise NotFound(f"No job found with id '{job_id}'", param="id")
        if changed.status == "cancelled":
            self.metrics.jobs.labels(status="cancelled").inc()
            self._finished(changed)
            return changed
        self.worker.cancel_local(job_id)
        deadline = time.monotonic() + self.settings.cancel_wait_s
        while changed.status not in TERMINAL and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            changed = await self.get(identity, job_id)
        return changed

    async def delete(self, identity: Identity, job_id: str) -> None:
        await self.get(identity, job_id)
        outcome = await self.store.delete(job_id)
        if outcome == "missing":
            raise NotFound(f"No job found with id '{job_id}'", param="id")
        if outcome == "active":
            raise InvalidRequest(
                "Only a finished job can be deleted: cancel it first", code="job_not_finished"
            )


def _request_id(call: Call) -> dict[str, str]:
    """The submitting request's ``X-Request-ID``, kept with the job and sent with each attempt."""
    return {"X-Request-ID": call.note.request_id} if call.note.request_id else {}
