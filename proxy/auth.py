"""Who is calling: a client credential becomes a *tenant*, a hash that never reveals it.

A client's credential is forwarded (passthrough mode) in the header it came in: a credential is
kept as one string, ``"<header>: <value>"`` (:func:`credential_header` reads it back), so that
whatever stores it (an async job) keeps the header too.

Key checks take the same time however much of a key a guess gets right. A presented token is
hashed first (SHA-256), and only digests are compared: with :func:`hmac.compare_digest`, against
*every* configured digest (:func:`_matches` never stops at the first match). Even an early-exit
comparison of digests would tell an attacker only how many leading digits of SHA-256(guess) equal
SHA-256(key), which says nothing about the key (the hash cannot be inverted): hashing first is
what removes the timing oracle, ``compare_digest`` is the belt on top. The memo of known tokens
is a dict keyed by the raw token: a lookup hashes the token with Python's keyed string hash and
compares strings only on a full hash match, so its timing does not follow a partial match either;
a memo hit is faster than a miss, but a hit needs the whole token. Pinned by
``tests/hostile/test_constant_time.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .config import AuthSettings, Settings
from .errors import AuthenticationFailed, PermissionDenied

__all__ = [
    "ANONYMOUS",
    "Authenticator",
    "Identity",
    "credential_header",
    "is_loopback",
]


@dataclass(frozen=True, slots=True)
class Identity:
    #: Stable, non-reversible id of the credential: partitions the cache and owns jobs.
    tenant: str
    #: The client's credential to forward (passthrough mode), as ``"<header>: <value>"``;
    #: ``None``: the upstream's own ``api_key`` is sent.
    credential: str | None
    #: sha256 of the presented token (empty when none): for admin checks.
    digest: str = ""


ANONYMOUS = Identity(tenant="anonymous", credential=None)

#: The headers a client credential may come in, as forwarded.
_HEADERS = {"authorization": "Authorization", "api-key": "api-key"}


def credential_header(credential: str) -> tuple[str, str]:
    """``(header name, value)`` of a credential kept by :class:`Identity`. A bare value (kept by
    an older version, e.g. in a queued job) is an ``Authorization`` value."""
    name, sep, value = credential.partition(": ")
    header = _HEADERS.get(name.lower()) if sep else None
    return (header, value) if header else ("Authorization", credential)


def _presented(headers: Mapping[str, str]) -> tuple[str, str, str] | None:
    """``(header name, value as sent, bare token)`` from ``Authorization`` or ``api-key``."""
    auth = headers.get("Authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return "Authorization", auth, (token.strip() if scheme.lower() == "bearer" else auth)
    key = headers.get("api-key")
    if key:
        return "api-key", key, key
    return None


def _matches(digest: str, known: Iterable[str]) -> bool:
    """Whether ``digest`` is one of ``known``: a constant-time comparison with each of them, all
    of them (no early exit: the time does not say which one matched, nor where)."""
    found = False
    for candidate in known:
        found |= hmac.compare_digest(digest, candidate)
    return found


def is_loopback(host: str | None) -> bool:
    """Whether an address (or ``localhost``) is this machine's loopback; ``None`` (a peer
    without an IP address) is not."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False  # a host name: it may resolve to any interface
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


class Authenticator:
    """Turns request headers into an :class:`Identity`, per ``auth.mode``.

    Its memo of known tokens lives and dies with the instance: a reload builds a new one from the
    new settings (:meth:`for_settings`), so a key removed from ``auth.keys`` stops working at once.
    """

    _MEMO_MAX = 4096

    def __init__(self, settings: AuthSettings, *, upstream_key: bool = True) -> None:
        """``upstream_key``: some upstream has an ``api_key`` a keyless caller would be lent."""
        self.mode = settings.mode
        self._keys = {k.digest: k.name for k in settings.keys}
        self._admin = frozenset(k.digest for k in settings.admin_keys)
        self._lend_anywhere = settings.lend_upstream_key or not upstream_key
        #: bare token -> (tenant, digest): what costs a hash and a key check. The credential to
        #: forward is built per request from the header as sent.
        self._memo: dict[str, tuple[str, str]] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> Authenticator:
        return cls(settings.auth, upstream_key=any(u.api_key for u in settings.upstreams))

    def identify(self, headers: Mapping[str, str], *, peer: str | None = None) -> Identity:
        """The caller presenting ``headers`` from the address ``peer``."""
        presented = _presented(headers)
        if presented is None:
            return self._keyless(peer)
        header, value, token = presented
        known = self._memo.get(token)
        if known is None:
            known = self._check(token)
            if len(self._memo) >= self._MEMO_MAX:
                self._memo.clear()
            self._memo[token] = known
        tenant, digest = known
        if self.mode == "keys":
            return Identity(tenant=tenant, credential=None, digest=digest)
        return Identity(tenant=tenant, credential=f"{header}: {value}", digest=digest)

    def _keyless(self, peer: str | None) -> Identity:
        if self.mode == "keys":
            raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'")
        if self._lend_anywhere or is_loopback(peer):
            return ANONYMOUS
        raise AuthenticationFailed(
            "Missing API key. This proxy sends its upstream's own key for a request without one "
            "only from loopback: send your API key, or set auth.lend_upstream_key: true to lend "
            "it to every caller"
        )

    def _check(self, token: str) -> tuple[str, str]:
        digest = hashlib.sha256(token.encode()).hexdigest()
        if self.mode == "keys" and not _matches(digest, self._keys):
            raise AuthenticationFailed("Incorrect API key provided")
        return "t_" + digest[:32], digest

    def admin(self, headers: Mapping[str, str]) -> Identity:
        """The identity of an admin key (never forwarded upstream): 401 without a key, 403 with
        a key that is not in ``auth.admin_keys``. Client keys play no part, in either mode."""
        presented = _presented(headers)
        if presented is None:
            raise AuthenticationFailed("Missing admin key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(presented[2].encode()).hexdigest()
        if not _matches(digest, self._admin):
            raise PermissionDenied("This route needs an admin key (auth.admin_keys)")
        return Identity(tenant="t_" + digest[:32], credential=None, digest=digest)

    def require_admin(self, headers: Mapping[str, str]) -> None:
        self.admin(headers)
