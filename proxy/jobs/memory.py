"""The embedded job store: one process, nothing survives a restart."""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
from dataclasses import replace
from typing import Any

from .models import ACTIVE, CANCELLED, Job, JobStatus
from .store import Deleted, Lease

__all__ = ["MemoryJobStore"]


class MemoryJobStore:
    """Dicts and a heap; the same semantics as the Redis store, for a single replica."""

    def __init__(self, *, result_ttl_s: float) -> None:
        self._ttl_s = result_ttl_s
        self._jobs: dict[str, Job] = {}
        self._queue: list[tuple[float, int, str]] = []  # (score, seq, id), lazily pruned
        self._seq = itertools.count()
        self._leases: dict[str, float] = {}
        self._expires: dict[str, float] = {}
        self._by_tenant: dict[str, dict[str, float]] = {}
        self._active: dict[str, int] = {}
        self._idem: dict[tuple[str, str], tuple[str, float]] = {}
        self._idem_of: dict[str, tuple[str, str]] = {}  # job id -> its idempotency entry

    async def submit(
        self, job: Job, *, idempotency_key: str | None, idempotency_ttl_s: float, max_active: int
    ) -> tuple[Job, bool] | None:
        now = time.time()
        if idempotency_key is not None:
            known = self._idem.get((job.tenant, idempotency_key))
            if known is not None and known[1] > now:
                earlier = self._live(known[0])
                if earlier is not None:
                    return earlier, False
        if self._active.get(job.tenant, 0) >= max_active:
            return None
        self._jobs[job.id] = job
        self._push(job)
        self._by_tenant.setdefault(job.tenant, {})[job.id] = job.created_at
        self._active[job.tenant] = self._active.get(job.tenant, 0) + 1
        if idempotency_key is not None:
            self._idem[(job.tenant, idempotency_key)] = (job.id, now + idempotency_ttl_s)
            self._idem_of[job.id] = (job.tenant, idempotency_key)
        return job, True

    async def get(self, job_id: str) -> Job | None:
        return self._live(job_id)

    async def page(
        self, tenant: str, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[Job], bool]:
        index = self._by_tenant.get(tenant, {})
        ordered = sorted(index.items(), key=lambda kv: kv[1], reverse=True)
        if after is not None:
            position = next((i for i, (jid, _) in enumerate(ordered) if jid == after), None)
            ordered = ordered[position + 1 :] if position is not None else []
        out: list[Job] = []
        for job_id, _ in ordered:
            job = self._live(job_id)
            if job is None or (status is not None and job.status != status):
                continue
            if len(out) == limit:
                return out, True
            out.append(job)
        return out, False

    async def claim(
        self, *, now: float, limit: int, lease_s: float, owner: str
    ) -> tuple[list[Job], float | None]:
        self._reap(now)
        claimed: list[Job] = []
        while self._queue and len(claimed) < limit and self._queue[0][0] <= now:
            _, _, job_id = heapq.heappop(self._queue)
            job = self._jobs.get(job_id)
            if job is None or job.status != "queued" or job_id in self._leases:
                continue
            token = f"{owner}:{secrets.token_hex(6)}"
            job = replace(job, status="in_progress", token=token, attempts=job.attempts + 1)
            self._jobs[job_id] = job
            self._leases[job_id] = now + lease_s
            claimed.append(job)
        return claimed, self._next_due()

    async def renew(self, job_id: str, token: str, *, until: float) -> Lease:
        job = self._jobs.get(job_id)
        if job is None or job.token != token or job.status != "in_progress":
            return "lost"
        self._leases[job_id] = until
        return "cancel" if job.cancel_requested else "held"

    async def finish(
        self,
        job_id: str,
        token: str,
        *,
        status: JobStatus,
        result: dict[str, Any],
        now: float,
    ) -> Job | None:
        job = self._held(job_id, token)
        if job is None:
            return None
        job = job.finish(status, result, now)
        self._jobs[job_id] = job
        self._leases.pop(job_id, None)
        self._done(job, now)
        return job

    async def retry(
        self, job_id: str, token: str, *, run_at: float, last_error: dict[str, Any] | None = None
    ) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        last_error = job.last_error if last_error is None else last_error
        self._back(replace(job, status="queued", token="", score=run_at, last_error=last_error))
        return True

    async def release(self, job_id: str, token: str) -> bool:
        job = self._held(job_id, token)
        if job is None:
            return False
        self._back(replace(job, status="queued", token="", attempts=job.attempts - 1))
        return True

    async def cancel(self, job_id: str, *, now: float) -> Job | None:
        job = self._live(job_id)
        if job is None:
            return None
        if job.status == "queued":
            job = job.finish("cancelled", CANCELLED, now)
            self._jobs[job_id] = job
            self._done(job, now)
        elif job.status == "in_progress":
            job = replace(job, cancel_requested=True)
            self._jobs[job_id] = job
        return job

    async def delete(self, job_id: str) -> Deleted:
        job = self._live(job_id)
        if job is None:
            return "missing"
        if job.status in ACTIVE:
            return "active"
        self._forget(job)
        return "deleted"

    async def close(self) -> None:
        pass

    async def queued(self) -> int:
        # (a requeued job may have an older entry left in the lazily pruned heap)
        return len({i for _, _, i in self._queue if i not in self._leases and self._is_queued(i)})

    def _is_queued(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.status == "queued"

    # --- internals ----------------------------------------------------------------------------

    def _push(self, job: Job) -> None:
        heapq.heappush(self._queue, (job.score, next(self._seq), job.id))

    def _next_due(self) -> float | None:
        while self._queue:
            score, _, job_id = self._queue[0]
            job = self._jobs.get(job_id)
            if job is not None and job.status == "queued" and job_id not in self._leases:
                return score
            heapq.heappop(self._queue)
        return None

    def _held(self, job_id: str, token: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.status != "in_progress" or job.token != token:
            return None
        return job

    def _back(self, job: Job) -> None:
        """Back to the queue, unless a cancel was asked for while it ran: then cancelled."""
        if not job.cancel_requested:
            self._requeue(job)
            return
        now = time.time()
        self._jobs[job.id] = job.finish("cancelled", CANCELLED, now)
        self._leases.pop(job.id, None)
        self._done(self._jobs[job.id], now)

    def _requeue(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._leases.pop(job.id, None)
        self._push(job)

    def _done(self, job: Job, now: float) -> None:
        self._expires[job.id] = now + self._ttl_s
        active = self._active.pop(job.tenant, 1) - 1
        if active > 0:
            self._active[job.tenant] = active

    def _reap(self, now: float) -> None:
        for job_id, until in list(self._leases.items()):
            if until > now:
                continue
            job = self._jobs[job_id]
            if job.cancel_requested:
                job = job.finish("cancelled", CANCELLED, now)
                self._jobs[job_id] = job
                self._leases.pop(job_id)
                self._done(job, now)
            else:
                self._requeue(replace(job, status="queued", token=""))
        for job_id, expires_at in list(self._expires.items()):
            if expires_at <= now:
                self._forget(self._jobs[job_id])

    def _live(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        expires_at = self._expires.get(job_id)
        if expires_at is not None and expires_at <= time.time():
            self._forget(job)
            return None
        return job

    def _forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._expires.pop(job.id, None)
        self._leases.pop(job.id, None)
        index = self._by_tenant.get(job.tenant)
        if index is not None:
            index.pop(job.id, None)
            if not index:
                del self._by_tenant[job.tenant]
        entry = self._idem_of.pop(job.id, None)
        if entry is not None and self._idem.get(entry, ("",))[0] == job.id:
            del self._idem[entry]
