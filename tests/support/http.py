"""Raw HTTP for tests: exact bytes, status and headers, no SDK in between."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, NamedTuple


class Raw(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str,
    url: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Raw:
    """Send one request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    all_headers = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    all_headers.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Raw(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Raw(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def post(
    url: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Raw:
    return request("POST", url, body, headers, timeout)


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> Raw:
    return request("GET", url, None, headers, timeout)
