"""The batch service: creation rules, ownership, cancel."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..auth import Identity
from ..config import Settings
from ..errors import InvalidRequest, NotFound
from ..jobs.service import check_metadata
from ..upstream import forward_headers
from .files import FileService
from .models import ENDPOINTS, Batch, new_id
from .runner import BatchRunner
from .store import BatchStore

__all__ = ["BatchService"]

_FIELDS = frozenset(
    {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
)


class BatchService:
    def __init__(
        self, *, store: BatchStore, files: FileService, runner: BatchRunner, settings: Settings
    ) -> None:
        self.store = store
        self.files = files
        self.runner = runner
        self.settings = settings.batches

    async def create(
        self, identity: Identity, data: dict[str, Any], headers: Mapping[str, str]
    ) -> Batch:
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise InvalidRequest(f"Unknown parameter: '{unknown[0]}'", param=unknown[0])
        endpoint = data.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"'endpoint' must be one of {list(ENDPOINTS)}", param="endpoint")
        if data.get("completion_window") != "24h":
            raise InvalidRequest("'completion_window' must be '24h'", param="completion_window")
        metadata = check_metadata(data.get("metadata"))
        file_id = data.get("input_file_id")
        if not isinstance(file_id, str):
            raise InvalidRequest("'input_file_id' must be a file id", param="input_file_id")
        meta = await self.files.get(identity.tenant, file_id)
        if meta.purpose != "batch":
            raise InvalidRequest(
                "The input file must be uploaded with purpose 'batch'", param="input_file_id"
            )
        if meta.lines > self.settings.max_lines:
            raise InvalidRequest(
                f"The input file has {meta.lines} lines: a batch may have at most "
                f"{self.settings.max_lines} requests (batches.max_lines)",
                param="input_file_id",
                code="too_many_requests",
            )
        now = time.time()
        # The lines' requests keep the client's headers (account headers, user agent), less
        # credentials and the proxy's controls; their body is JSON whatever this one was.
        kept = {str(k): str(v) for k, v in forward_headers(headers).items()}
        kept.pop("Content-Type", None)
        kept["Content-Type"] = "application/json"
        batch = Batch(
            id=new_id("batch_"),
            tenant=identity.tenant,
            endpoint=endpoint,
            input_file_id=file_id,
            created_at=now,
            expires_at=now + self.settings.completion_window_s,
            metadata=metadata,
            headers=kept,
            credential=identity.credential,
        )
        await self.store.create(batch)
        self.runner.wake()
        return batch

    async def get(self, identity: Identity, batch_id: str) -> Batch:
        batch = await self.store.get(batch_id) if batch_id.startswith("batch_") else None
        if batch is None or batch.tenant != identity.tenant:
            raise NotFound(f"No batch found with id '{batch_id}'", param="batch_id")
        return batch

    async def page(
        self, identity: Identity, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        return await self.store.page(identity.tenant, limit=limit, after=after)

    async def cancel(self, identity: Identity, batch_id: str) -> Batch:
        """``cancelling`` at once; the runner stops admitting lines, lets running ones finish
        and ends the batch ``cancelled`` with what is done."""
        batch = await self.get(identity, batch_id)
        if batch.phase == "done":
            return batch
        changed = await self.store.cancel(batch_id, now=time.time())
        if changed is None:
            raise NotFound(f"No batch found with id '{batch_id}'", param="batch_id")
        self.runner.cancel_local(batch_id)
        return changed
