"""The job store's contract: one narrow Protocol, two implementations (memory, Redis).

Every method is atomic. The lease ``token`` handed out by :meth:`JobStore.claim` names one
attempt: a result, a retry or a release is recorded only while that token still holds the job,
so when a lease expired and another worker retook the job, the late one's result is refused.
That is what makes delivery at-least-once but result recording exactly-once.

A finished job (and its result) is deleted ``result_ttl_s`` after it finished.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from .models import Job, JobStatus

__all__ = ["Deleted", "JobStore", "Lease"]

#: ``held``: the lease was renewed; ``cancel``: renewed, but a cancel was asked for;
#: ``lost``: the token no longer holds the job (lease expired and retaken, or finished).
Lease = Literal["held", "cancel", "lost"]
Deleted = Literal["deleted", "missing", "active"]


class JobStore(Protocol):
    async def submit(
        self, job: Job, *, idempotency_key: str | None, idempotency_ttl_s: float, max_active: int
    ) -> tuple[Job, bool] | None:
        """Store and enqueue ``job``: ``(job, True)``; ``(earlier job, False)`` for a known
        idempotency key; ``None`` when the tenant already has ``max_active`` active jobs."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def page(
        self, tenant: str, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[Job], bool]:
        """The tenant's jobs newest first, after the job ``after``; and whether more follow."""
        ...

    async def claim(
        self, *, now: float, limit: int, lease_s: float, owner: str
    ) -> tuple[list[Job], float | None]:
        """Requeue expired leases, then take up to ``limit`` due jobs (``in_progress``, one more
        attempt, a fresh token each); also say when the next queued job is due."""
        ...

    async def renew(self, job_id: str, token: str, *, until: float) -> Lease: ...

    async def finish(
        self, job_id: str, token: str, *, status: JobStatus, result: dict[str, Any], now: float
    ) -> Job | None:
        """Record the result if ``token`` still holds the job; the finished job, else ``None``."""
        ...

    async def retry(
        self, job_id: str, token: str, *, run_at: float, last_error: dict[str, Any] | None = None
    ) -> bool:
        """Back to the queue, due at ``run_at``, if ``token`` still holds the job; the job
        keeps ``last_error`` (why it waits) until its next attempt is recorded."""
        ...

    async def release(self, job_id: str, token: str) -> bool:
        """Back to the queue in its old place, the attempt not counted (shutdown)."""
        ...

    async def cancel(self, job_id: str, *, now: float) -> Job | None:
        """Cancel a queued job at once, flag a running one; the job after the change."""
        ...

    async def delete(self, job_id: str) -> Deleted: ...

    async def close(self) -> None: ...

    async def queued(self) -> int:
        """Jobs waiting in the queue (for the metrics and ``/stats``)."""
        ...
