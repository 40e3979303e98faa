"""Every Redis key the job feature uses, built here from ``redis.key_prefix``.

All keys carry one hash tag, ``{<prefix>:jobs}``: the scripts that claim, finish and requeue
jobs touch the queue, the lease set and job hashes together, so on Redis Cluster they must
share a slot. The queue is one key, so the whole job feature lives in one slot.
"""

from __future__ import annotations

import hashlib

__all__ = ["JobKeys"]


class JobKeys:
    def __init__(self, prefix: str) -> None:
        self.tag = f"{{{prefix}:jobs}}"
        #: ZSET job id -> due time (run_after or arrival), seconds.
        self.queue = f"{self.tag}:queue"
        #: ZSET job id -> lease deadline of the attempt that runs it.
        self.leases = f"{self.tag}:leases"
        #: ZSET "<id>\t<tenant>\t<idempotency key>" -> expiry of a finished job, seconds:
        #: swept on every claim, so the tenant index and idempotency key go with the job.
        self.expiry = f"{self.tag}:expiry"
        #: HASH tenant -> number of queued or running jobs (no field at zero).
        self.active = f"{self.tag}:active"
        #: Job hashes are ``job_prefix + id`` (scripts build them from this prefix).
        self.job_prefix = f"{self.tag}:job:"
        #: Per-tenant ZSET job id -> created_at, for listing newest first.
        self.tenant_prefix = f"{self.tag}:tenant:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def tenant(self, tenant: str) -> str:
        return self.tenant_prefix + tenant

    def idempotency(self, tenant: str, key: str) -> str:
        # Hashed: the client's key may be long or hold anything.
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.tag}:idem:{tenant}:{digest}"

    def rate(self, upstream: str, kind: str) -> str:
        return f"{self.tag}:rate:{upstream}:{kind}"
