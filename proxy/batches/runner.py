"""The batch runner of one replica: claim batches, check their input, run their lines through the
pipeline, and write the output and error files.

A batch is held by one replica at a time under a lease, as a job is (renewed while it runs; a
dead replica's batch is taken over when the lease runs out). Each line's outcome is recorded
once, by line number, so a batch resumed elsewhere skips what is done and never reports a line
twice. Lines are admitted through one semaphore of ``batches.concurrency`` per replica: a large
batch keeps that many lines in flight (enough for the micro-batcher to merge them) and no more,
and never takes the job workers' slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from typing import Any

import orjson

from ..auth import Identity
from ..call import Call, Next
from ..config import Settings
from ..errors import ProxyError, StoreUnavailable, UpstreamError
from ..handlers.proxy import ProxyDoor
from ..jobs.dispatch import Dispatcher
from ..jobs.limits import RateLimiter, estimate_tokens
from ..jobs.worker import MAX_RETRY_AFTER_S, RETRY_STATUSES, retry_after_s
from ..redis_client import raise_if_cancelled
from .files import FileService, FileWriter
from .lines import LineError, Request, blank, chunks_of, parse_request, read_lines
from .models import Batch, BatchStatus, new_id
from .store import BatchStore, Lease

__all__ = ["BatchRunner", "MAX_LINE_ERRORS"]

log = logging.getLogger(__name__)

#: ``errors.data`` names at most this many bad lines (the count of the rest is in the last one).
MAX_LINE_ERRORS = 1000
#: Lines whose results are read back together when the output files are written.
_BLOCK = 512
#: Why a line that never ran is in the error file.
_NOT_RUN = {
    "cancelled": ("batch_cancelled", "This request was not executed: the batch was cancelled."),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}


class _Lost(Exception):
    """The lease was lost: another replica holds the batch now."""


class _Control:
    def __init__(self, cancelled: bool) -> None:
        self.cancel = asyncio.Event()
        if cancelled:
            self.cancel.set()
        #: A line's outcome could not be recorded: the run must not finalize.
        self.unrecorded = False


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


def _tokens(body: Any) -> tuple[int, int]:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return 0, 0
    given = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    made = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (given if isinstance(given, int) else 0), (made if isinstance(made, int) else 0)


def _response_line(req: Request, status: int, request_id: str | None, body: Any) -> bytes:
    return orjson.dumps(
        {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": req.custom_id,
            "response": {
                "status_code": status,
                "request_id": request_id or f"req_{secrets.token_hex(16)}",
                "body": body,
            },
            "error": None,
        }
    )


def _error_line(custom_id: str, code: str | None, message: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
    )


class BatchRunner(Dispatcher):
    def __init__(
        self,
        *,
        store: BatchStore,
        files: FileService,
        door: ProxyDoor,
        pipeline: Next,
        settings: Settings,
        limiter: RateLimiter,
    ) -> None:
        self.store = store
        self.files = files
        self.door = door
        self.pipeline = pipeline
        self.settings = settings.batches
        self.jobs = settings.jobs
        self.max_line_bytes = settings.server.max_body_bytes
        self.limiter = limiter
        self.slots = asyncio.Semaphore(self.settings.concurrency)
        self.owner = secrets.token_hex(4)
        super().__init__()
        self._controls: dict[str, _Control] = {}
        self._heartbeat_s = min(self.settings.lease_s / 3, 1.0)

    # --- dispatch ---------------------------------------------------------------------------

    def cancel_local(self, batch_id: str) -> None:
        """Stop admitting the batch's lines at once if this replica runs it."""
        control = self._controls.get(batch_id)
        if control is not None:
            control.cancel.set()

    async def _dispatch_once(self) -> None:
        free = self.settings.max_running - len(self._tasks)
        self._changed.clear()
        if free <= 0:
            await self._changed.wait()
            return
        try:
            batches = await self.store.claim(
                now=time.time(), limit=free, lease_s=self.settings.lease_s, owner=self.owner
            )
        except StoreUnavailable:
            raise_if_cancelled()
            if self._stopping:
                return
            await asyncio.sleep(self.settings.poll_interval_s)
            return
        for batch in batches:
            self._start(self._own(batch), name=f"batch-{batch.id}")
        if len(batches) == free:
            return
        await self._wait_for_change(self.settings.poll_interval_s)

    async def _own(self, batch: Batch) -> None:
        """Run one batch while renewing its lease; hand it back if this replica stops."""
        control = _Control(batch.cancel_requested)
        self._controls[batch.id] = control
        work = asyncio.create_task(self._drive(batch, control))
        try:
            await self._supervise(batch, work, control)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(batch.id, batch.token)  # else: the lease runs out
            raise
        finally:
            self._controls.pop(batch.id, None)
        if not work.cancelled() and (exc := work.exception()) is not None:
            if isinstance(exc, _Lost | StoreUnavailable):
                log.warning("batch %s left for another attempt: %s", batch.id, exc)
            else:
                log.error("batch %s failed; it is retried after its lease", batch.id, exc_info=exc)

    async def _supervise(self, batch: Batch, work: asyncio.Task[None], control: _Control) -> None:
        while True:
            done, _ = await asyncio.wait({work}, timeout=self._heartbeat_s)
            if done:
                return
            until = time.time() + self.settings.lease_s
            lease: Lease
            try:
                lease = await self.store.renew(batch.id, batch.token, until=until)
            except StoreUnavailable:
                raise_if_cancelled()
                continue
            if lease == "cancel":
                control.cancel.set()
            elif lease == "lost":
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                return

    # --- one batch --------------------------------------------------------------------------

    async def _drive(self, batch: Batch, control: _Control) -> None:
        if batch.phase == "validate":
            batch = await self._validate(batch)
        if batch.phase == "run":
            final = await self._run_lines(batch, control)
            changes: dict[str, Any] = {
                "phase": "finalize",
                "final": final,
                "output_file_id": new_id("file-"),
                "error_file_id": new_id("file-"),
            }
            if final == "completed":
                changes |= {"status": "finalizing", "finalizing_at": time.time()}
            batch = await self._update(batch, changes)
        if batch.phase == "finalize":
            await self._finalize(batch)

    async def _update(self, batch: Batch, changes: dict[str, Any]) -> Batch:
        if not await self.store.update(batch.id, batch.token, changes):
            raise _Lost(f"lease of {batch.id} lost")
        return batch.but(**changes)

    def _call(self, batch: Batch, body: dict[str, Any]) -> Call:
        return self.door.build_call(
            identity=Identity(tenant=batch.tenant, credential=batch.credential),
            method="POST",
            path=batch.endpoint,
            headers=batch.headers,
            body=orjson.dumps(body),
            data=body,
        )

    def _lines(self, batch: Batch) -> Any:
        chunks = chunks_of(self.files.store, batch.input_file_id)
        return read_lines(chunks, max_line_bytes=self.max_line_bytes)

    async def _validate(self, batch: Batch) -> Batch:
        """Check every line (as OpenAI does, and that its model routes); a file with bad lines
        fails the batch with ``errors.data`` naming each line."""
        errors: list[dict[str, Any]] = []
        bad = total = 0
        seen: set[str] = set()
        models: set[Any] = set()
        if await self.files.store.get(batch.input_file_id) is None:
            errors.append({"code": "invalid_file", "line": None, "param": "input_file_id",
                           "message": "The input file no longer exists."})  # fmt: skip
        async for number, raw in self._lines(batch):
            if blank(raw):
                continue
            total += 1
            try:
                self._check(batch, parse_request(raw, endpoint=batch.endpoint), seen, models)
            except LineError as exc:
                bad += 1
                if len(errors) < MAX_LINE_ERRORS:
                    errors.append(exc.entry(number))
        if bad > len(errors):
            errors.append({"code": "too_many_errors", "line": None, "param": None,
                           "message": f"{bad - len(errors)} more lines have errors."})  # fmt: skip
        if total == 0 and not errors:
            errors.append({"code": "empty_file", "line": None, "param": "input_file_id",
                           "message": "The input file has no requests."})  # fmt: skip
        if total > self.settings.max_lines:
            errors.append({"code": "too_many_requests", "line": None, "param": "input_file_id",
                           "message": f"A batch may have at most {self.settings.max_lines} "
                           "requests (batches.max_lines)."})  # fmt: skip
        if errors:
            changes = {"status": "failed", "failed_at": time.time(), "errors": errors}
            if await self.store.finish(batch.id, batch.token, changes, ttl_s=self._ttl_s) is None:
                raise _Lost(f"lease of {batch.id} lost")
            return batch.but(**changes, phase="done")
        model = next(iter(models)) if len(models) == 1 else None
        return await self._update(
            batch,
            {
                "status": "in_progress",
                "phase": "run",
                "total": total,
                "model": model,
                "in_progress_at": time.time(),
            },
        )

    def _check(self, batch: Batch, req: Request, seen: set[str], models: set[Any]) -> None:
        if req.custom_id in seen:
            raise LineError(
                "duplicate_custom_id",
                "The custom_id for this request is a duplicate of another request. The "
                "custom_id parameter must be unique for each request in a batch.",
                "custom_id",
            )
        seen.add(req.custom_id)
        try:
            call = self._call(batch, dict(req.body))
        except ProxyError as exc:
            param = f"body.{exc.param}" if exc.param else "body"
            raise LineError(exc.code or "invalid_request", exc.message, param) from None
        models.add(call.model)

    @property
    def _ttl_s(self) -> float:
        return self.files.settings.ttl_s

    async def _run_lines(self, batch: Batch, control: _Control) -> BatchStatus:
        """Run every line not done yet; the batch's final status."""
        if control.cancel.is_set():
            return "cancelled"
        remaining = batch.expires_at - time.time()
        if remaining <= 0:
            return "expired"
        done = await self.store.done(batch.id)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async with asyncio.timeout(remaining):
                await self._admit(batch, control, done, tasks)
                while tasks:
                    await asyncio.wait(list(tasks))
        except TimeoutError:
            return "cancelled" if control.cancel.is_set() else "expired"
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if control.unrecorded:
            raise StoreUnavailable("a line's outcome could not be recorded")
        return "cancelled" if control.cancel.is_set() else "completed"

    async def _admit(
        self, batch: Batch, control: _Control, done: set[int], tasks: set[asyncio.Task[None]]
    ) -> None:
        async for number, raw in self._lines(batch):
            if control.cancel.is_set():
                return
            if number in done or blank(raw):
                continue
            try:
                req = parse_request(raw, endpoint=batch.endpoint)
            except LineError:
                continue  # cannot happen: the batch was validated
            await self.slots.acquire()
            if control.cancel.is_set():
                self.slots.release()
                return
            task = asyncio.create_task(self._line(batch, number, req, control))
            tasks.add(task)
            task.add_done_callback(self._line_done(tasks))

    def _line_done(self, tasks: set[asyncio.Task[None]]) -> Any:
        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            self.slots.release()

        return done

    async def _line(self, batch: Batch, number: int, req: Request, control: _Control) -> None:
        try:
            ok, line, tokens = await self._execute(batch, req)
        except (asyncio.CancelledError, StoreUnavailable):
            raise
        except Exception:  # the outermost place of a line: one bad line must not stop the rest
            log.exception("batch %s line %d failed unexpectedly", batch.id, number)
            ok, line, tokens = False, _error_line(req.custom_id, "internal_error", "failed"), (0, 0)
        for attempt in range(10):
            try:
                await self.store.record(
                    batch.id, batch.token, number, ok=ok, line=line, tokens=tokens
                )
                return
            except StoreUnavailable:
                raise_if_cancelled()
                await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        control.unrecorded = True

    async def _execute(self, batch: Batch, req: Request) -> tuple[bool, bytes, tuple[int, int]]:
        """One line with the job machinery's retries: connection errors, timeouts, 408, 409,
        429 and 5xx are tried again with backoff (``Retry-After`` honoured), up to
        ``jobs.max_attempts``; the rate limits of ``jobs.rate_limit`` apply."""
        failure = b""
        for attempt in range(1, self.jobs.max_attempts + 1):
            try:
                call = self._call(batch, dict(req.body))
            except ProxyError as exc:
                return False, _error_line(req.custom_id, exc.code, exc.message), (0, 0)
            assert call.json is not None
            await self.limiter.acquire(call.upstream.name, estimate_tokens(call.json, call.body))
            wait_s = 0.0
            try:
                reply = await self.pipeline(call)
                raw = await reply.read()
            except UpstreamError as exc:
                failure = _error_line(req.custom_id, exc.code, exc.message)
            except ProxyError as exc:
                return False, _error_line(req.custom_id, exc.code, exc.message), (0, 0)
            else:
                body = _parse(raw)
                line = _response_line(req, reply.status, reply.headers.get("x-request-id"), body)
                if reply.ok:
                    return True, line, _tokens(body)
                if reply.status not in RETRY_STATUSES and reply.status < 500:
                    return False, line, (0, 0)
                failure = line
                wait_s = min(retry_after_s(reply.headers), MAX_RETRY_AFTER_S)
            if attempt < self.jobs.max_attempts:
                await asyncio.sleep(max(wait_s, self._backoff_s(attempt)))
        return False, failure, (0, 0)

    def _backoff_s(self, attempts: int) -> float:
        cap = min(self.jobs.backoff_max_s, self.jobs.backoff_base_s * 2 ** (attempts - 1))
        return random.uniform(cap / 2, cap)

    # --- output files -----------------------------------------------------------------------

    async def _finalize(self, batch: Batch) -> None:
        """Write the output and error files in input order from the recorded results, then end
        the batch. Redone from the start (same file ids) if this replica dies meanwhile."""
        assert batch.output_file_id and batch.error_file_id
        final: BatchStatus = batch.final or "completed"
        unlimited = 2**62
        writers = [
            FileWriter(self.files.store, fid, ttl_s=self._ttl_s, max_bytes=unlimited)
            for fid in (batch.output_file_id, batch.error_file_id)
        ]
        for writer in writers:
            await writer.abort()  # what an earlier attempt wrote
        block: list[tuple[int, bytes | None]] = []
        async for number, raw in self._lines(batch):
            if blank(raw):
                continue
            block.append((number, raw))
            if len(block) == _BLOCK:
                await self._write_block(batch, final, block, *writers)
                block = []
        await self._write_block(batch, final, block, *writers)
        now = time.time()
        changes: dict[str, Any] = {"status": final, f"{final}_at": now}
        for name, writer, suffix in zip(
            ("output_file_id", "error_file_id"), writers, ("output", "error"), strict=True
        ):
            if writer.bytes:
                filename = f"{batch.id}_{suffix}.jsonl"
                await writer.commit(tenant=batch.tenant, filename=filename, purpose="batch_output")
                changes[name] = writer.id
            else:
                await writer.abort()
                changes[name] = None
        if await self.store.finish(batch.id, batch.token, changes, ttl_s=self._ttl_s) is None:
            raise _Lost(f"lease of {batch.id} lost")
        log.info("batch %s %s", batch.id, final)

    async def _write_block(
        self,
        batch: Batch,
        final: BatchStatus,
        block: list[tuple[int, bytes | None]],
        out: FileWriter,
        err: FileWriter,
    ) -> None:
        results = await self.store.results(batch.id, [number for number, _ in block])
        for (_, raw), result in zip(block, results, strict=True):
            if result is not None:
                await (out if result[:1] == b"o" else err).write(result[1:] + b"\n")
                continue
            custom_id = parse_request(raw, endpoint=batch.endpoint).custom_id
            code, message = _NOT_RUN.get(final, ("internal_error", "The request was not run."))
            await err.write(_error_line(custom_id, code, message) + b"\n")
