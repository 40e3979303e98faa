"""Helpers for the Batch API tests: JSONL files, waiting for a batch, reading its files."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from openai.types import Batch

from tests.conftest import Proxy, ProxyFactory

TERMINAL = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]},
    }


def embed_line(custom_id: str, text: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "text-embedding-3-small", "input": text},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def upload(client: openai.OpenAI, data: bytes, name: str = "input.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(data)), purpose="batch").id


def wait_done(client: openai.OpenAI, batch_id: str, timeout_s: float = 30) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def read_jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).content
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def batch_proxy(make_proxy: ProxyFactory) -> Callable[..., Proxy]:
    """A proxy with the cache off; ``batches``/``files``/other sections merged in."""

    def make(**sections: Any) -> Proxy:
        config: dict[str, Any] = {
            "cache": {"enabled": False},
            "jobs": {"backoff_base_s": 0.01, "poll_interval_s": 0.1},
            "batches": {"poll_interval_s": 0.1, **sections.pop("batches", {})},
            **sections,
        }
        return make_proxy(config)

    return make
