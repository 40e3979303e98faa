"""Key checks are constant-time in the sense that matters: only SHA-256 digests are compared,
with ``hmac.compare_digest``, against every configured key whatever the guess (see the
docstring of ``proxy/auth.py`` for why that is the property that matters)."""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

import pytest

from proxy import auth as auth_module
from proxy.auth import Authenticator
from proxy.config import AuthSettings
from proxy.errors import AuthenticationFailed, PermissionDenied

KEYS = [f"sk-client-key-{i}-secret" for i in range(5)]
ADMINS = [f"sk-admin-key-{i}-secret" for i in range(3)]
HEX64 = re.compile(r"[0-9a-f]{64}")
_COMPARE = hmac.compare_digest


class Recorder:
    """Stands in for ``hmac.compare_digest`` (and calls it), keeping every pair compared."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Any, Any]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        self.pairs.append((a, b))
        return _COMPARE(a, b)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(auth_module.hmac, "compare_digest", recorder)
    return recorder


def authenticator() -> Authenticator:
    settings = AuthSettings(
        mode="keys",
        keys=[{"name": f"k{i}", "key": k} for i, k in enumerate(KEYS)],  # type: ignore[list-item]
        admin_keys=[{"name": f"a{i}", "key": k} for i, k in enumerate(ADMINS)],  # type: ignore[list-item]
    )
    return Authenticator(settings)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "token",
    [KEYS[0], KEYS[-1], "sk-client-key-0-secreX", "x", KEYS[0][:-1]],
    ids=["first key", "last key", "last char wrong", "short", "a prefix"],
)
def test_client_keys_every_digest_compared_never_the_key(recorder: Recorder, token: str) -> None:
    auth = authenticator()
    try:
        auth.identify(bearer(token))
    except AuthenticationFailed:
        assert token not in KEYS
    presented = hashlib.sha256(token.encode()).hexdigest()
    assert len(recorder.pairs) == len(KEYS)  # no early exit on the first key, nor on a match
    assert {a for a, _ in recorder.pairs} == {presented}
    assert sorted(b for _, b in recorder.pairs) == sorted(
        hashlib.sha256(k.encode()).hexdigest() for k in KEYS
    )
    assert all(HEX64.fullmatch(a) and HEX64.fullmatch(b) for a, b in recorder.pairs)


@pytest.mark.parametrize("token", [ADMINS[0], ADMINS[-1], KEYS[0], ADMINS[0][:-1]])
def test_admin_keys_every_digest_compared_never_the_key(recorder: Recorder, token: str) -> None:
    auth = authenticator()
    try:
        auth.require_admin(bearer(token))
    except PermissionDenied:
        assert token not in ADMINS
    assert len(recorder.pairs) == len(ADMINS)
    assert all(HEX64.fullmatch(a) and HEX64.fullmatch(b) for a, b in recorder.pairs)


def test_the_authenticator_keeps_digests_not_keys() -> None:
    """Configured keys live on as digests only (what the comparisons see)."""
    auth = authenticator()
    kept = repr(vars(auth))
    assert not any(key in kept for key in KEYS + ADMINS)
    assert hashlib.sha256(KEYS[0].encode()).hexdigest() in kept
