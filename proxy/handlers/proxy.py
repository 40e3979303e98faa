"""The proxy door: any ``/v1/...`` request becomes a :class:`Call` and goes down the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import StreamReader, hdrs, web
from multidict import CIMultiDict

from ..auth import Identity
from ..call import CacheControl, Call, Next, Reply, vary_of
from ..config import LimitsSettings
from ..errors import (
    InvalidRequest,
    PayloadTooLarge,
    ProxyError,
    RequestTimeout,
    UpstreamError,
)
from ..keys import DOOR, IDENTITY
from ..limits import check_limits
from ..observe.note import current_note
from ..upstream import Router, Upstream, forward_headers

__all__ = [
    "BodyGuard",
    "ProxyDoor",
    "parse_json_object",
    "proxy_handler",
    "safe_path",
    "write_reply",
]

log = logging.getLogger(__name__)

AsyncDoor = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]

#: Content types that are passed through as a stream instead of parsed as JSON.
_STREAMED_TYPES = ("multipart/", "application/octet-stream", "audio/", "image/", "video/")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or :class:`InvalidRequest`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg}). "
            "The body must be a JSON object.",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, not {type(data).__name__}",
            code="invalid_json",
        )
    return data


def _undeclared_json(body: bytes) -> dict[str, Any] | None:
    """A body sent without a Content-Type is JSON when it parses as a JSON object."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class ProxyDoor:
    """Builds calls from HTTP requests and writes replies back."""

    def __init__(
        self,
        *,
        router: Router,
        pipeline: Next,
        max_body_bytes: int,
        body_read_timeout_s: float = 60.0,
        limits: LimitsSettings | None = None,
    ) -> None:
        self.router = router
        self.limits = limits or LimitsSettings()
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        self.body_read_timeout_s = body_read_timeout_s
        #: Set by the jobs feature: answers ``Prefer: respond-async`` requests with a job.
        self.async_door: AsyncDoor | None = None

    async def read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body of {length} bytes is larger than the limit of "
                f"{self.max_body_bytes} bytes"
            )
        if request.content.is_eof():
            # Already all here (a small body comes in the same packet as its headers): nothing
            # to wait for, so no timer to arm and cancel.
            return await request.read()
        try:
            async with asyncio.timeout(self.body_read_timeout_s):
                return await request.read()
        except TimeoutError:
            raise RequestTimeout(
                f"The request body did not arrive within {self.body_read_timeout_s:g} s"
            ) from None

    def build_call(
        self,
        *,
        identity: Identity,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        data: dict[str, Any],
        query: str = "",
    ) -> Call:
        """Route by ``model`` (alias applied) and describe the upstream-bound request.

        Used by every door: HTTP, the job worker and the batch runner.
        """
        check_limits(path, body, data, self.limits)
        model = data.get("model")
        if model is None:
            upstream = self.router.default_or_404()
        elif not isinstance(model, str):
            raise InvalidRequest("'model' must be a string", param="model", code="invalid_type")
        else:
            forwarded, upstream = self.router.resolve(model)
            if forwarded != model:
                data["model"] = model = forwarded
                body = orjson.dumps(data)
        stream = data.get("stream")
        if stream is None:  # absent or null: not streamed
            stream = False
        elif not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
        sent_headers = forward_headers(headers)
        return Call(
            tenant=identity.tenant,
            upstream=upstream,
            method=method,
            path=path,
            body=body,
            json=data,
            query=query,
            headers=sent_headers,
            vary=vary_of(query, sent_headers),
            credential=identity.credential,
            model=model,
            stream=stream,
            cache=CacheControl.parse(headers.get("Cache-Control"), headers.get("X-Cache-TTL")),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        identity: Identity = request[IDENTITY]
        url = request.rel_url
        path, query = safe_path(url.raw_path), url.raw_query_string
        # The type the client sent: aiohttp reports a missing one as application/octet-stream.
        declared = request.headers.get(hdrs.CONTENT_TYPE) or None
        streamed = (declared or "").lower().startswith(_STREAMED_TYPES)  # case-insensitive
        if request.method == "POST" and not streamed:
            body = await self.read_body(request)
            headers: Mapping[str, str] = request.headers
            data = _undeclared_json(body) if declared is None else None
            if declared is None and data is not None:
                # Decided: it is JSON, and the upstream is told so.
                headers = CIMultiDict(request.headers)
                headers[hdrs.CONTENT_TYPE] = "application/json"
            elif not body or declared is None:
                # Empty (e.g. the SDK's cancel calls) or untyped bytes: nothing to route by.
                reply = await self.passthrough(request, identity, path, query, body=body)
                return await write_reply(request, reply)
            call = self.build_call(
                identity=identity,
                method="POST",
                path=path,
                headers=headers,
                body=body,
                data=parse_json_object(body) if data is None else data,
                query=query,
            )
            if self.async_door is not None and "respond-async" in request.headers.get("Prefer", ""):
                return await self.async_door(request, call)
            reply = await self.pipeline(call)
        else:
            reply = await self.passthrough(request, identity, path, query)
        return await write_reply(request, reply)

    async def passthrough(
        self,
        request: web.Request,
        identity: Identity,
        path: str,
        query: str,
        *,
        body: bytes | None = None,
        upstream: Upstream | None = None,
    ) -> Reply:
        """Uploads, downloads and GETs: to ``upstream`` (default: the default upstream),
        streamed both ways."""
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than {self.max_body_bytes} bytes")
        if upstream is None:
            upstream = self.router.default_or_404()
        headers = forward_headers(request.headers)
        call = Call(
            tenant=identity.tenant,
            upstream=upstream,
            method=request.method,
            path=path,
            body=b"",
            query=query,
            headers=headers,
            credential=identity.credential,
        )
        if body is not None or not request.body_exists:
            return await upstream.send(call, data=body or b"", stream_reply=True)
        if length is not None:
            headers["Content-Length"] = str(length)
        guard = BodyGuard(
            request.content, max_bytes=self.max_body_bytes, read_timeout_s=self.body_read_timeout_s
        )
        try:
            return await upstream.send(call, data=guard.chunks(), stream_reply=True)
        except UpstreamError:
            if guard.error is not None:  # the client's body was at fault, not the upstream
                raise guard.error from None
            raise


class BodyGuard:
    """A client's streamed body, bounded in size and in the wait for each piece."""

    def __init__(self, content: StreamReader, *, max_bytes: int, read_timeout_s: float) -> None:
        self.content = content
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.error: ProxyError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        while True:
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    chunk = await self.content.readany()
            except TimeoutError:
                self.error = RequestTimeout(
                    f"The request body stalled for more than {self.read_timeout_s:g} s"
                )
                raise self.error from None
            if not chunk:
                return
            seen += len(chunk)
            if seen > self.max_bytes:
                self.error = PayloadTooLarge(
                    f"Request body is larger than the limit of {self.max_bytes} bytes"
                )
                raise self.error
            yield chunk


def safe_path(raw_path: str) -> str:
    """The request path as the client sent it (still percent-encoded), if it stays where it
    points: no ``.``/``..`` segment and no encoded separator, in any spelling. Forwarded as is,
    so the upstream sees the bytes the client sent."""
    if "%" in raw_path or "/." in raw_path or "\\" in raw_path:
        for segment in raw_path.split("/"):
            plain = unquote(segment)
            if plain in (".", "..") or any(c in plain for c in "/\\?#"):
                raise InvalidRequest("Invalid request path", code="invalid_path")
    return raw_path


async def write_reply(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Write a reply: whole bodies at once, streams chunk by chunk as they arrive."""
    if reply.stream is None:
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
    sse = reply.headers.get("Content-Type", "").startswith("text/event-stream")
    try:
        resp = web.StreamResponse(status=reply.status, headers=reply.headers)
        await resp.prepare(request)
        # An SSE stream is written up to its last complete event, so that a failure can still
        # be told to the client as an event of its own instead of a glued-on fragment.
        pending = b""
        note = current_note()
        try:
            async for chunk in reply.stream:
                if not sse:
                    await resp.write(chunk)
                    note.first_byte()
                    continue
                pending += chunk
                end = _events_end(pending)
                if end:
                    await resp.write(pending[:end])
                    note.first_byte()
                    pending = pending[end:]
            if pending:
                await resp.write(pending)
        except ProxyError as exc:
            log.warning("stream from upstream ended early on %s: %s", request.path, exc.message)
            return await _broken(request, resp, exc if sse else None)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:  # headers are sent: no error response is possible any more
            log.exception("stream failed on %s", request.path)
            failure = UpstreamError("The stream failed inside the proxy")
            return await _broken(request, resp, failure if sse else None)
    finally:
        await reply.aclose()
    await resp.write_eof()
    return resp


#: Past this, a partial event is written anyway (a stream must never be held back for long).
_MAX_PENDING_EVENT_BYTES = 64 * 1024


def _events_end(buf: bytes) -> int:
    """Where the last complete SSE event in ``buf`` ends (0: none yet)."""
    lf, crlf = buf.rfind(b"\n\n"), buf.rfind(b"\r\n\r\n")
    end = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
    if not end and len(buf) > _MAX_PENDING_EVENT_BYTES:
        return len(buf)
    return end


async def _broken(
    request: web.Request, resp: web.StreamResponse, error: ProxyError | None
) -> web.StreamResponse:
    """End a stream that failed after its headers were sent.

    An event stream gets an error event in the OpenAI convention (``data: {"error": ...}``) and
    ends without ``[DONE]``: the SDKs raise an ``APIError`` with its message. Any other body has
    no way to say so: the connection is broken, so the client sees a failure, not a short body.
    """
    if error is not None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write(b"data: " + error.to_bytes() + b"\n\n")
            await resp.write_eof()
            return resp
    if request.transport is not None:
        request.transport.abort()
    return resp


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[DOOR].handle(request)
