"""An ``https://`` upstream through the proxy: verified against the CA store, with SNI.

The fake upstream serves TLS with a certificate for ``localhost`` signed by a CA made here;
``SSL_CERT_FILE`` points OpenSSL's default store at that CA, as an operator would for a private
gateway (docs/operations.md, "Connections to the upstreams").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fake_upstream import create_fake_upstream
from tests.conftest import ProxyFactory
from tests.observe.test_metrics import scrape, value
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp
from tests.support.tls import make_certs, server_context

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "over TLS"}]}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a certificate it signs for localhost."""
    return make_certs(tmp_path_factory.mktemp("https-upstream"))


@pytest.fixture
def tls_fake(bg: BackgroundLoop, certs: Path) -> Iterator[LiveApp]:
    live = LiveApp(bg, create_fake_upstream()).start(ssl_context=server_context(certs))
    yield live
    live.stop()


def _upstream(live: LiveApp) -> dict[str, object]:
    # By name, not address: the certificate is for localhost (SNI and the name check).
    url = f"https://localhost:{live.port}/v1"
    return {"upstreams": [{"name": "tls", "base_url": url, "models": ["*"]}]}


def test_a_verified_https_upstream_answers_json_and_streams(
    make_proxy: ProxyFactory, tls_fake: LiveApp, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs / "ca.crt"))
    proxy = make_proxy({**_upstream(tls_fake), "cache": {"enabled": False}})
    client = proxy.client()
    answer = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "echo: over TLS"
    chunks = client.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == "echo: over TLS"


def test_an_https_upstream_with_an_unknown_ca_is_a_502(
    make_proxy: ProxyFactory, tls_fake: LiveApp, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = tmp_path / "empty.pem"
    other.write_text("")  # a store without the upstream's CA
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    proxy = make_proxy({**_upstream(tls_fake), "cache": {"enabled": False}})
    out = http.post(f"{proxy.base_url}/chat/completions", CHAT)
    assert out.status == 502
    assert out.json()["error"]["message"] == "upstream 'tls' is unreachable"
    m = scrape(proxy.url)
    assert value(m, "llm_proxy_upstream_errors_total", upstream="tls", kind="unreachable") == 1
