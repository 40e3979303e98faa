"""Who is calling: a client credential becomes a *tenant*, a hash that never reveals it."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from .config import AuthSettings
from .errors import AuthenticationFailed, PermissionDenied

__all__ = ["ANONYMOUS", "Authenticator", "Identity"]


@dataclass(frozen=True, slots=True)
class Identity:
    #: Stable, non-reversible id of the credential: partitions the cache and owns jobs.
    tenant: str
    #: ``Authorization`` value to forward upstream (passthrough mode), else ``None``.
    credential: str | None
    #: sha256 of the presented token (empty when none): for admin checks.
    digest: str = ""


ANONYMOUS = Identity(tenant="anonymous", credential=None)


def _token(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``(Authorization value to forward, bare token)`` from ``Authorization`` or ``api-key``."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return auth, (token.strip() if scheme.lower() == "bearer" else auth)
    key = headers.get("api-key")
    if key:
        return f"Bearer {key}", key
    return None, None


class Authenticator:
    """Turns request headers into an :class:`Identity`, per ``auth.mode``."""

    _MEMO_MAX = 4096

    def __init__(self, settings: AuthSettings) -> None:
        self.mode = settings.mode
        self._keys = {k.digest: k.name for k in settings.keys}
        self._admin = frozenset(k.digest for k in settings.admin_keys)
        self._memo: dict[str, Identity] = {}

    def identify(self, headers: Mapping[str, str]) -> Identity:
        forward, token = _token(headers)
        if token is None:
            if self.mode == "keys":
                raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'")
            return ANONYMOUS
        identity = self._memo.get(token)
        if identity is None:
            identity = self._identify(forward, token)
            if len(self._memo) >= self._MEMO_MAX:
                self._memo.clear()
            self._memo[token] = identity
        return identity

    def _identify(self, forward: str | None, token: str) -> Identity:
        digest = hashlib.sha256(token.encode()).hexdigest()
        tenant = "t_" + digest[:32]
        if self.mode == "keys":
            if not any(hmac.compare_digest(digest, d) for d in self._keys):
                raise AuthenticationFailed("Incorrect API key provided")
            return Identity(tenant=tenant, credential=None, digest=digest)
        return Identity(tenant=tenant, credential=forward, digest=digest)

    def require_admin(self, headers: Mapping[str, str]) -> None:
        _, token = _token(headers)
        if token is None:
            raise AuthenticationFailed("Missing admin key")
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not any(hmac.compare_digest(digest, d) for d in self._admin):
            raise PermissionDenied("This route needs an admin key (auth.admin_keys)")
