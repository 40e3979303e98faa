"""The records of the Batch API emulation: a stored file, a batch, and their public objects.

The shapes follow OpenAI's (``openai.types.FileObject`` and ``openai.types.Batch``).
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import orjson

from ..jobs.models import stamp_us

__all__ = [
    "ENDPOINTS",
    "Batch",
    "BatchStatus",
    "FileMeta",
    "Phase",
    "new_id",
]

#: Endpoints a batch may name (OpenAI's list, less the image and video ones).
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
)

BatchStatus = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
#: What the runner does next: check the input, run its lines, or write the output files.
Phase = Literal["validate", "run", "finalize", "done"]


def new_id(prefix: str) -> str:
    """``prefix`` + creation time in microseconds (14 hex digits) + 80 random bits: ids are
    unguessable and sort by creation, which the listings rely on."""
    return f"{prefix}{stamp_us():014x}{secrets.token_hex(10)}"


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A stored file; its bytes are kept apart, in chunks."""

    id: str
    tenant: str
    filename: str
    purpose: str
    bytes: int
    created_at: float
    expires_at: float
    #: Lines in the file (an upper bound: blank lines count), for ``batches.max_lines``.
    lines: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def to_bytes(self) -> builtins.bytes:
        return orjson.dumps({f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_bytes(cls, raw: builtins.bytes) -> FileMeta:
        return cls(**orjson.loads(raw))


_TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


@dataclass(frozen=True, slots=True)
class Batch:
    """One batch as the store holds it. ``credential`` and ``headers`` never leave the proxy."""

    id: str
    tenant: str
    endpoint: str
    input_file_id: str
    created_at: float
    expires_at: float
    metadata: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    credential: str | None = None
    status: BatchStatus = "validating"
    phase: Phase = "validate"
    #: The status the batch ends in once its files are written (``finalize`` phase).
    final: BatchStatus | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    #: The lease token of the replica that runs the batch (``""``: none).
    token: str = ""
    cancel_requested: bool = False

    def public(self) -> dict[str, Any]:
        """The OpenAI batch object."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": None if self.errors is None else {"object": "list", "data": self.errors},
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            # Chosen when finalizing starts, but only files once the batch is done.
            "output_file_id": self.output_file_id if self.phase == "done" else None,
            "error_file_id": self.error_file_id if self.phase == "done" else None,
            "created_at": int(self.created_at),
            "expires_at": int(self.expires_at),
        }
        for name in _TIMES:
            value = getattr(self, name)
            out[name] = None if value is None else int(value)
        out["request_counts"] = {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
        }
        out["metadata"] = self.metadata
        out["usage"] = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        return out

    def but(self, **changes: Any) -> Batch:
        return replace(self, **changes)

    # --- flat encoding (Redis hash fields) ----------------------------------------------------

    #: Fields stored as one JSON document (they never change after creation).
    STATIC = ("endpoint", "input_file_id", "created_at", "expires_at", "metadata", "headers")
    #: Counters the store increments in place.
    COUNTERS = ("total", "completed", "failed", "input_tokens", "output_tokens")

    def to_fields(self) -> dict[str, str | bytes]:
        out: dict[str, str | bytes] = {
            "tenant": self.tenant,
            "doc": orjson.dumps({name: getattr(self, name) for name in self.STATIC}),
            "status": self.status,
            "phase": self.phase,
            "token": self.token,
        }
        for name in self.COUNTERS:
            out[name] = str(getattr(self, name))
        out.update(changed_fields(self._changes()))
        if self.credential is not None:
            out["credential"] = self.credential
        return out

    def _changes(self) -> dict[str, Any]:
        names = ("final", "model", "errors", "output_file_id", "error_file_id", *_TIMES)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @classmethod
    def from_fields(cls, batch_id: str, raw: dict[bytes, bytes]) -> Batch:
        doc = orjson.loads(raw[b"doc"])
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"doc"}
        values: dict[str, Any] = {name: doc[name] for name in cls.STATIC}
        for name in cls.COUNTERS:
            values[name] = int(text.get(name, "0"))
        for name in _TIMES:
            if text.get(name):
                values[name] = float(text[name])
        for name in ("final", "model", "output_file_id", "error_file_id", "credential"):
            if text.get(name):
                values[name] = text[name]
        if text.get("errors"):
            values["errors"] = orjson.loads(text["errors"])
        return cls(
            id=batch_id,
            tenant=text["tenant"],
            status=text["status"],  # type: ignore[arg-type]
            phase=text.get("phase", "validate"),  # type: ignore[arg-type]
            token=text.get("token", ""),
            cancel_requested=text.get("cancel") == "1",
            **values,
        )


def changed_fields(changes: dict[str, Any]) -> dict[str, str | bytes]:
    """Changes to a batch as Redis hash fields (``errors`` as JSON, times as numbers)."""
    out: dict[str, str | bytes] = {}
    for name, value in changes.items():
        if name == "errors":
            out[name] = orjson.dumps(value)
        elif isinstance(value, float):
            out[name] = repr(value)
        else:
            out[name] = "" if value is None else str(value)
    return out
