"""The narrow storage interface both cache backends implement (bytes in, bytes out, with a TTL).

The response-cache stage and the per-input embedding cache call it concurrently; every method
is safe to call from many tasks at once. ``get`` and ``set`` fail open: a broken store reads as
empty and drops writes, so the proxy keeps answering through the upstream.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["CacheBackend"]


class CacheBackend(Protocol):
    """Bytes by key, each with its own TTL. Keys are ``<scope>:<hash>`` (see ``cache.keys``)."""

    async def get(self, key: str) -> bytes | None:
        """The value, or ``None`` when absent, expired or the store is unreachable."""
        ...

    async def set(self, key: str, value: bytes, *, ttl_s: float) -> None:
        """Store ``value`` for ``ttl_s`` seconds (best effort)."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key`` (best effort)."""
        ...

    async def clear(self, *, scope: str | None = None, digest: str | None = None) -> int:
        """Delete every entry, or those of one ``scope``, or those whose hash is ``digest``;
        returns how many. Raises :class:`~proxy.errors.StoreUnavailable` if it cannot."""
        ...

    def problem(self) -> str | None:
        """Why the backend is not serving right now (for ``/readyz``), or ``None``."""
        ...

    async def close(self) -> None: ...
