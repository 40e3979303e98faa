"""The proxy's own errors, and how each maps to an OpenAI-shaped HTTP answer.

Every error the proxy makes itself is a :class:`ProxyError`; the HTTP door renders it as
``{"error": {"message", "type", "param", "code"}}`` with ``status``. Lower-level errors
(aiohttp, redis, asyncio) are translated where they happen, with ``raise ... from exc``::

    ProxyError                      500 api_error
    ├── InvalidRequest              400 invalid_request_error (malformed JSON, wrong types)
    ├── AuthenticationFailed        401 invalid_request_error / invalid_api_key
    ├── PermissionDenied            403 permission_error (admin routes)
    ├── NotFound                    404 invalid_request_error (unknown job, no route)
    │   └── ModelNotFound           404 model_not_found
    ├── RequestTimeout              408 invalid_request_error / request_timeout (slow body)
    ├── PayloadTooLarge             413 invalid_request_error / request_too_large
    ├── RateLimited                 429 rate_limit_error (queue limits)
    ├── UpstreamError               502 api_error (unreachable, broken)
    │   └── UpstreamTimeout         504 api_error / timeout
    ├── NotCached                   504 (Cache-Control: only-if-cached on a miss)
    └── StoreUnavailable            503 api_error (job store down)
"""

from __future__ import annotations

from typing import Any

import orjson


class ProxyError(Exception):
    """Base of every error the proxy answers with itself."""

    status = 500
    type = "api_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, type_=self.type, param=self.param, code=self.code)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


class InvalidRequest(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(ProxyError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotFound(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(ProxyError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(ProxyError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class NotCached(ProxyError):
    status = 504
    type = "invalid_request_error"
    code = "not_cached"


class StoreUnavailable(ProxyError):
    status = 503
    type = "api_error"
    code = "store_unavailable"


def error_body(
    message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
