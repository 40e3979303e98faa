"""Webhooks: the finished job object, POSTed to the job's ``callback_url``, signed.

``X-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with ``jobs.webhook_secret``.
Redirects are never followed, and only hosts matching ``jobs.callback_allow`` are reached.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

__all__ = ["WebhookSender", "callback_allowed", "sign"]

log = logging.getLogger(__name__)


def callback_allowed(url: str, patterns: Sequence[str]) -> bool:
    """http(s), no credentials in the URL, and a host (or ``host:port``) matching a pattern."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return False
    default = 443 if parts.scheme == "https" else 80
    host_port = f"{host}:{port or default}"
    return any(fnmatch.fnmatchcase(host_port if ":" in p else host, p.lower()) for p in patterns)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


class WebhookSender:
    """Delivers webhooks in tasks it owns; retried with backoff on 5xx, 429 and network errors."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        secret: str,
        allow: Sequence[str],
        max_attempts: int,
        timeout_s: float,
    ) -> None:
        self._session = session
        self._secret = secret
        self._allow = tuple(allow)
        self._max_attempts = max_attempts
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, url: str, job: dict[str, Any]) -> None:
        task = asyncio.create_task(self._deliver(url, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver(self, url: str, job: dict[str, Any]) -> None:
        if not callback_allowed(url, self._allow):  # the allow-list may have changed since
            log.warning("webhook for %s not sent: callback host no longer allowed", job["id"])
            return
        body = orjson.dumps(job)
        for attempt in range(1, self._max_attempts + 1):
            if await self._post(url, body, job["id"]):
                return
            if attempt < self._max_attempts:
                cap = min(60.0, 2.0 ** (attempt - 1))
                await asyncio.sleep(random.uniform(cap / 2, cap))
        log.warning("webhook for %s given up after %d attempts", job["id"], self._max_attempts)

    async def _post(self, url: str, body: bytes, job_id: str) -> bool:
        """True when delivered or not worth retrying."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "llm-proxy-webhook",
            "X-Job-Id": job_id,
            "X-Signature": sign(self._secret, body, int(time.time())),
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("webhook for %s failed: %s", job_id, type(exc).__name__)
            return False
        if 200 <= status < 300:
            return True
        retry = status in (408, 429) or status >= 500
        log.info("webhook for %s answered %d%s", job_id, status, " (retrying)" if retry else "")
        return not retry
