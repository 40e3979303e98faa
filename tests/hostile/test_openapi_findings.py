"""What the schemathesis run (tests/hostile/test_schemathesis.py) found, one raw request each:
every one was a 5xx made by the proxy, or an answer its OpenAPI document does not describe."""

from __future__ import annotations

from tests.conftest import KEY_A, Proxy
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
