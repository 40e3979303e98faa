"""The door reads a request body under ``server.body_read_timeout_s``, and arms that timer only
when there is something to wait for: a body already complete (the usual small JSON request, in
the packet of its headers) is read without one, a cost paid on every request otherwise."""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from aiohttp import StreamReader
from aiohttp.test_utils import make_mocked_request

from proxy.handlers.proxy import ProxyDoor

BODY = b'{"model": "gpt-4o", "messages": []}'


def door() -> ProxyDoor:
    async def pipeline(_call: object) -> object:
        raise AssertionError("not called")

    # Reading a body needs neither routing nor the pipeline.
    return ProxyDoor(router=None, pipeline=pipeline, max_body_bytes=1 << 20)  # type: ignore[arg-type]


def post(content: StreamReader) -> object:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(BODY))}
    return make_mocked_request("POST", "/v1/chat/completions", headers=headers, payload=content)


def reader() -> StreamReader:
    return StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=asyncio.get_running_loop())


def no_timer(_delay: float | None) -> object:
    raise AssertionError("a complete body needs no timer")


async def test_a_complete_body_is_read_without_a_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    content = reader()
    content.feed_data(BODY)
    content.feed_eof()
    monkeypatch.setattr(asyncio, "timeout", no_timer)
    assert await door().read_body(post(content)) == BODY  # type: ignore[arg-type]


async def test_a_body_still_arriving_is_read_whole() -> None:
    content = reader()
    content.feed_data(BODY[:10])
    loop = asyncio.get_running_loop()
    loop.call_soon(content.feed_data, BODY[10:])
    loop.call_soon(content.feed_eof)
    assert await door().read_body(post(content)) == BODY  # type: ignore[arg-type]
