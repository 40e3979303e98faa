"""The proxy door: any ``/v1/...`` request becomes a :class:`Call` and goes down the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from ..auth import Identity
from ..call import CacheControl, Call, Next, Reply, vary_of
from ..errors import InvalidRequest, PayloadTooLarge, ProxyError
from ..keys import DOOR, IDENTITY
from ..upstream import Router, forward_headers

__all__ = ["ProxyDoor", "parse_json_object", "proxy_handler", "write_reply"]

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


class ProxyDoor:
    """Builds calls from HTTP requests and writes replies back."""

    def __init__(self, *, router: Router, pipeline: Next, max_body_bytes: int) -> None:
        self.router = router
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        #: Set by the jobs feature: answers ``Prefer: respond-async`` requests with a job.
        self.async_door: AsyncDoor | None = None

    async def read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(
                f"Request body of {length} bytes is larger than the limit of "
                f"{self.max_body_bytes} bytes"
            )
        return await request.read()

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
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
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
        if request.method == "POST" and not request.content_type.startswith(_STREAMED_TYPES):
            body = await self.read_body(request)
            call = self.build_call(
                identity=identity,
                method="POST",
                path=request.path,
                headers=request.headers,
                body=body,
                data=parse_json_object(body),
                query=request.query_string,
            )
            if self.async_door is not None and "respond-async" in request.headers.get("Prefer", ""):
                return await self.async_door(request, call)
            reply = await self.pipeline(call)
        else:
            reply = await self.passthrough(request, identity)
        return await write_reply(request, reply)

    async def passthrough(self, request: web.Request, identity: Identity) -> Reply:
        """Uploads, downloads and GETs: to the default upstream, streamed both ways."""
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            raise PayloadTooLarge(f"Request body is larger than {self.max_body_bytes} bytes")
        upstream = self.router.default_or_404()
        headers = forward_headers(request.headers)
        if length is not None:
            headers["Content-Length"] = str(length)
        call = Call(
            tenant=identity.tenant,
            upstream=upstream,
            method=request.method,
            path=request.path,
            body=b"",
            query=request.query_string,
            headers=headers,
            credential=identity.credential,
        )
        data = request.content if request.body_exists else None
        return await upstream.send(call, data=data)


async def write_reply(request: web.Request, reply: Reply) -> web.StreamResponse:
    """Write a reply: whole bodies at once, streams chunk by chunk as they arrive."""
    if reply.stream is None:
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
    resp = web.StreamResponse(status=reply.status, headers=reply.headers)
    try:
        await resp.prepare(request)
        async for chunk in reply.stream:
            await resp.write(chunk)
    except ProxyError as exc:
        # Headers are gone already: the only honest signal left is to break the connection,
        # so the client sees a failed stream rather than a short one.
        log.warning("stream from upstream ended early on %s: %s", request.path, exc.message)
        if request.transport is not None:
            request.transport.abort()
        return resp
    finally:
        await reply.aclose()
    await resp.write_eof()
    return resp


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[DOOR].handle(request)
