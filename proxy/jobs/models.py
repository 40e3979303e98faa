"""The job record: what is stored, and the public job object clients see."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "TERMINAL",
    "Job",
    "JobStatus",
    "new_job_id",
]

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]
ACTIVE: frozenset[str] = frozenset({"queued", "in_progress"})
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
#: The result of a cancelled job.
CANCELLED: dict[str, Any] = {
    "error": {"message": "The job was cancelled", "type": "cancelled", "code": "cancelled"}
}


class _Stamps:
    """Microsecond timestamps, strictly increasing within the process."""

    def __init__(self) -> None:
        self._last_us = 0

    def next(self) -> int:
        self._last_us = max(self._last_us + 1, time.time_ns() // 1000)
        return self._last_us


_stamps = _Stamps()


def stamp_us() -> int:
    """Microseconds since the epoch, strictly increasing within the process: one clock for every
    id that must sort by creation (jobs here, files and batches in :mod:`proxy.batches`)."""
    return _stamps.next()


def new_job_id() -> str:
    """``job_``, the arrival time in microseconds (14 hex digits) and 72 random bits.

    Unguessable, and ids sort by arrival: the Redis queue relies on that to keep arrival order
    among jobs due at the same time (equal scores sort by member).
    """
    return f"job_{stamp_us():014x}{secrets.token_hex(9)}"


@dataclass(frozen=True, slots=True)
class Job:
    """One job as the store holds it.

    ``credential`` and ``body`` are private: they never appear in :meth:`public`. ``score``
    orders the queue (``run_after`` or arrival, in seconds with microseconds).
    """

    id: str
    tenant: str
    endpoint: str
    body: bytes
    created_at: float
    score: float
    status: JobStatus = "queued"
    run_after: int | None = None
    attempts: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    callback_url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    credential: str | None = None
    fingerprint: str = ""
    #: The lease token of the attempt that holds the job (``""`` when none does).
    token: str = ""
    cancel_requested: bool = False
    completed_at: float | None = None
    #: ``{"response": {...}}`` or ``{"error": {...}}`` once finished.
    result: dict[str, Any] | None = None
    #: Times a result was recorded: exactly once per finished job (tests check it).
    writes: int = 0
    #: ``{"status", "code", "message"}`` of the last failed attempt that is to be retried.
    last_error: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def public(self) -> dict[str, Any]:
        """The job object of the API: never the credential, the request body or headers."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "endpoint": self.endpoint,
            "created_at": int(self.created_at),
            "run_after": self.run_after,
            "attempts": self.attempts,
            "metadata": self.metadata,
        }
        if self.callback_url is not None:
            out["callback_url"] = self.callback_url
        if "X-Request-ID" in self.headers:  # the submitting request's id, for the logs
            out["request_id"] = self.headers["X-Request-ID"]
        if self.completed_at is not None:
            out["completed_at"] = int(self.completed_at)
        if self.last_error is not None and not self.finished:
            # Why the job is waiting, and until when (the queue's score is its due time).
            out["last_error"] = self.last_error
            if self.status == "queued":
                out["next_attempt_at"] = math.ceil(self.score)
        if self.result:
            out.update(self.result)
        return out

    def finish(self, status: JobStatus, result: dict[str, Any], now: float) -> Job:
        return replace(
            self,
            status=status,
            result=result,
            completed_at=now,
            token="",
            credential=None,
            writes=self.writes + 1,
        )

    # --- flat encoding (Redis hash fields) ----------------------------------------------------

    def to_fields(self) -> dict[str, bytes | str]:
        """Every field, as strings/bytes for a Redis hash."""
        doc = {
            "endpoint": self.endpoint,
            "created_at": self.created_at,
            "run_after": self.run_after,
            "metadata": self.metadata,
            "callback_url": self.callback_url,
            "headers": self.headers,
            "fingerprint": self.fingerprint,
        }
        fields: dict[str, bytes | str] = {
            "tenant": self.tenant,
            "status": self.status,
            "attempts": str(self.attempts),
            "score": repr(self.score),
            "doc": orjson.dumps(doc),
            "body": self.body,
            "token": self.token,
            "writes": str(self.writes),
        }
        if self.credential is not None:
            fields["credential"] = self.credential
        return fields

    @classmethod
    def from_fields(cls, job_id: str, raw: dict[bytes, bytes]) -> Job:
        """Inverse of :meth:`to_fields` (plus the fields the store's scripts maintain)."""
        doc = orjson.loads(raw[b"doc"])
        result = raw.get(b"result")
        completed = raw.get(b"completed_at")
        credential = raw.get(b"credential")
        last_error = raw.get(b"last_error")
        return cls(
            id=job_id,
            tenant=raw[b"tenant"].decode(),
            endpoint=doc["endpoint"],
            body=raw.get(b"body", b""),
            created_at=doc["created_at"],
            score=float(raw[b"score"]),
            status=raw[b"status"].decode(),  # type: ignore[arg-type]
            run_after=doc["run_after"],
            attempts=int(raw.get(b"attempts", b"0")),
            metadata=doc["metadata"],
            callback_url=doc["callback_url"],
            headers=doc["headers"],
            credential=credential.decode() if credential else None,
            fingerprint=doc["fingerprint"],
            token=raw.get(b"token", b"").decode(),
            cancel_requested=raw.get(b"cancel") == b"1",
            completed_at=float(completed) if completed else None,
            result=orjson.loads(result) if result else None,
            writes=int(raw.get(b"writes", b"0")),
            last_error=orjson.loads(last_error) if last_error else None,
        )
