"""What the schemathesis run (tests/hostile/test_schemathesis.py) found, one raw request each:
every one was a 5xx made by the proxy, or an answer its OpenAPI document does not describe."""

from __future__ import annotations

import re

import pytest

from proxy.handlers.openapi import openapi_document
from tests.conftest import KEY_A, Fake, Proxy
from tests.support import http

AUTH = {"Authorization": f"Bearer {KEY_A}"}


def test_a_multipart_upload_without_a_boundary_is_a_400(proxy: Proxy) -> None:
    got = http.post(
        f"{proxy.url}/v1/files", b"", headers={**AUTH, "Content-Type": "multipart/form-data"}
    )
    assert got.status == 400, got.body
    assert got.json()["error"]["type"] == "invalid_request_error"


def test_a_multipart_part_with_a_malformed_header_is_a_400(proxy: Proxy) -> None:
    """A control character in a part's header (aiohttp's own parser refuses it)."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="x\x01\x1c"\r\n\r\n1\r\n'
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'
    )
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    got = http.post(f"{proxy.url}/v1/files", body, headers=headers)
    assert got.status == 400, got.body
    assert got.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("PATCH", "/v1/jobs/job_1", "DELETE, GET"),
        ("HEAD", "/v1/jobs/job_1/content", "GET"),
        ("GET", "/v1/jobs/job_1/cancel", "POST"),
        ("GET", "/v1/cache", "DELETE"),
        ("PUT", "/v1/files", "GET, POST"),
        ("POST", "/v1/files/file-1/content", "GET"),
        ("DELETE", "/v1/batches/batch_1", "GET"),
        ("OPTIONS", "/v1/batches", "GET, POST"),
    ],
)
def test_a_method_the_proxys_own_route_does_not_serve_is_a_405_and_never_forwarded(
    proxy: Proxy, fake: Fake, method: str, path: str, allow: str
) -> None:
    """The proxy's own paths are not the upstream's: another method there is not forwarded (in
    ``auth.mode: keys`` it would reach the upstream with the proxy's own key)."""
    got = http.request(method, f"{proxy.url}{path}", headers=AUTH)
    assert got.status == 405, got.body
    assert set(got.headers["allow"].split(",")) == set(allow.split(", "))
    if method != "HEAD":
        assert got.json()["error"]["type"] == "invalid_request_error"
    assert not fake.state.requests


def test_an_expectation_other_than_100_continue_is_a_documented_417(proxy: Proxy) -> None:
    """Every operation answers 417 to ``Expect: <anything else>``, so the document says so."""
    doc = openapi_document()
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            url = proxy.url + re.sub(r"\{[a-z_]+\}", "x", path)
            got = http.request(method.upper(), url, headers={**AUTH, "Expect": "F"})
            assert got.status == 417, (method, path, got.body)
            assert "417" in operation["responses"], (method, path)
