"""``/v1/files`` and ``/v1/batches``: the OpenAI Batch API, emulated (``batches.mode: emulate``)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from ..batches.files import FileWriter
from ..batches.service import BatchService
from ..errors import InvalidRequest, NotFound, PayloadTooLarge, RequestTimeout
from ..keys import BATCHES, IDENTITY, SETTINGS
from .proxy import parse_json_object

__all__ = ["add_routes"]

#: Bytes of multipart framing allowed beyond ``files.max_bytes`` before a Content-Length is
#: refused unread.
_FRAMING_BYTES = 64 * 1024
_READ_BYTES = 64 * 1024
#: What a file name may keep in a ``Content-Disposition`` header (no quotes, no line breaks).
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _service(request: web.Request) -> BatchService:
    service: BatchService = request.app[BATCHES]
    return service


def _limit(request: web.Request, *, default: int, most: int) -> int:
    text = request.query.get("limit", str(default))
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= most:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {most}", param="limit")
    return limit


def _list(data: list[dict[str, Any]], more: bool) -> web.Response:
    return _json(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
    )


# --- files --------------------------------------------------------------------------------------


async def _part_chunks(part: BodyPartReader, timeout_s: float) -> AsyncIterator[bytes]:
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await part.read_chunk(_READ_BYTES)
        except TimeoutError:
            raise RequestTimeout(f"The upload stalled for more than {timeout_s:g} s") from None
        if not chunk:
            return
        yield chunk


async def upload_file(request: web.Request) -> web.StreamResponse:
    """``multipart/form-data`` with ``purpose`` and ``file``, streamed into the store."""
    files = _service(request).files
    settings = request.app[SETTINGS]
    limit = files.settings.max_bytes
    if request.content_length is not None and request.content_length > limit + _FRAMING_BYTES:
        raise PayloadTooLarge(f"A file may be at most {limit} bytes (files.max_bytes)")
    if not request.content_type.startswith("multipart/form-data"):
        raise InvalidRequest("Upload the file as multipart/form-data with 'file' and 'purpose'")
    purpose: str | None = None
    writer: FileWriter | None = None
    filename = "file.jsonl"
    try:
        reader = await request.multipart()  # a missing boundary is a ValueError too
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read_chunk(256)).decode("utf-8", "replace").strip()
            elif part.name == "file" and writer is None:
                filename = (part.filename or filename)[:255]
                writer = files.writer()
                timeout_s = settings.server.body_read_timeout_s
                async for chunk in _part_chunks(part, timeout_s):
                    await writer.write(chunk)
            else:
                await part.release()
        if writer is None:
            raise InvalidRequest("The upload has no 'file' part", param="file")
        purpose = files.check_purpose(purpose)
        meta = await writer.commit(
            tenant=request[IDENTITY].tenant, filename=filename, purpose=purpose
        )
    except BaseException as exc:
        if writer is not None:
            await asyncio.shield(writer.abort())
        # aiohttp's words for a malformed multipart body: ValueError, and a part's headers that
        # its HTTP parser refuses.
        if isinstance(exc, ValueError | BadHttpMessage):
            raise InvalidRequest("The multipart body is malformed") from None
        raise
    return _json(meta.public())


async def list_files(request: web.Request) -> web.StreamResponse:
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    metas, more = await _service(request).files.page(
        request[IDENTITY].tenant,
        limit=_limit(request, default=10_000, most=10_000),
        after=request.query.get("after"),
        newest_first=order == "desc",
        purpose=request.query.get("purpose"),
    )
    return _list([m.public() for m in metas], more)


async def get_file(request: web.Request) -> web.StreamResponse:
    files = _service(request).files
    meta = await files.get(request[IDENTITY].tenant, request.match_info["file_id"])
    return _json(meta.public())


async def file_content(request: web.Request) -> web.StreamResponse:
    """The file's bytes, streamed chunk by chunk from the store."""
    files = _service(request).files
    meta, chunks = await files.content(request[IDENTITY].tenant, request.match_info["file_id"])
    resp = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{_UNSAFE_NAME.sub("_", meta.filename)}"',
        }
    )
    resp.content_length = meta.bytes
    await resp.prepare(request)
    async for chunk in chunks:
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def delete_file(request: web.Request) -> web.StreamResponse:
    file_id = request.match_info["file_id"]
    await _service(request).files.delete(request[IDENTITY].tenant, file_id)
    return _json({"id": file_id, "object": "file", "deleted": True})


# --- batches ------------------------------------------------------------------------------------


async def create_batch(request: web.Request) -> web.StreamResponse:
    data = parse_json_object(await request.read())
    batch = await _service(request).create(request[IDENTITY], data, request.headers)
    return _json(batch.public())


async def get_batch(request: web.Request) -> web.StreamResponse:
    batch = await _service(request).get(request[IDENTITY], request.match_info["batch_id"])
    return _json(batch.public())


async def list_batches(request: web.Request) -> web.StreamResponse:
    batches, more = await _service(request).page(
        request[IDENTITY],
        limit=_limit(request, default=20, most=100),
        after=request.query.get("after"),
    )
    return _list([b.public() for b in batches], more)


async def cancel_batch(request: web.Request) -> web.StreamResponse:
    batch = await _service(request).cancel(request[IDENTITY], request.match_info["batch_id"])
    return _json(batch.public())


async def not_emulated(request: web.Request) -> web.StreamResponse:
    """Any other method or path under ``/v1/files`` and ``/v1/batches``: they live here, so the
    default upstream (and the client's key) must not hear of them."""
    raise NotFound(f"Invalid URL ({request.method} {request.path})")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files", list_files, allow_head=False)
    app.router.add_get("/v1/files/{file_id}", get_file, allow_head=False)
    app.router.add_get("/v1/files/{file_id}/content", file_content, allow_head=False)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches, allow_head=False)
    app.router.add_get("/v1/batches/{batch_id}", get_batch, allow_head=False)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    # Other paths under them: before the proxy's catch-all /v1/ route. (Another method on one
    # of the routes above is a 405 with Allow: proxy.middlewares.refuse_other_methods.)
    for prefix in ("/v1/files", "/v1/batches"):
        app.router.add_route("*", prefix + "/{rest:.*}", not_emulated)
