"""``/v1/jobs``: submit, read, list, cancel and delete jobs; ``Prefer: respond-async``."""

from __future__ import annotations

import base64
import re
from typing import Any

import orjson
from aiohttp import web

from ..auth import Identity
from ..call import Call
from ..errors import InvalidRequest, NotFound, PayloadTooLarge
from ..jobs.models import Job
from ..jobs.service import JobService, Submission, check_options
from ..keys import BATCHES, DOOR, IDENTITY, JOBS
from .proxy import parse_json_object

__all__ = ["add_routes", "async_door"]

_FIELDS = frozenset({"endpoint", "body", "run_after", "callback_url", "metadata"})
#: Served by the proxy itself in ``batches.mode: emulate``.
_EMULATED = ("/v1/files", "/v1/batches")
_STATUSES = frozenset({"queued", "in_progress", "completed", "failed", "cancelled"})
#: ``/v1`` and plain path segments: no ``.``/``..`` (the upstream URL would climb out of
#: ``/v1``), no percent escapes, query or fragment.
_ENDPOINT = re.compile(r"/v1(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~:-]+)+")


def _json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def _service(request: web.Request) -> JobService:
    service: JobService | None = request.app[JOBS]
    if service is None:
        raise NotFound("Jobs are switched off on this proxy (jobs.enabled: false)")
    return service


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= 255:
        raise InvalidRequest("'Idempotency-Key' must be 1 to 255 characters")
    return key


def _accepted(job: Job, created: bool, extra: dict[str, str] | None = None) -> web.Response:
    headers = {"Location": f"/v1/jobs/{job.id}", **(extra or {})}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _json(job.public(), status=202, headers=headers)


async def async_door(request: web.Request, call: Call) -> web.StreamResponse:
    """Any proxied JSON POST with ``Prefer: respond-async`` becomes a job."""
    sub = Submission(call=call, idempotency_key=_idempotency_key(request))
    job, created = await _service(request).submit(sub)
    return _accepted(job, created, {"Preference-Applied": "respond-async"})


def _endpoint(data: dict[str, Any], *, local: tuple[str, ...]) -> str:
    """``local``: the proxy's own route families besides jobs (the emulated files and batches),
    which a job would send to the upstream instead."""
    endpoint = data.get("endpoint")
    if (
        not isinstance(endpoint, str)
        or not _ENDPOINT.fullmatch(endpoint)
        or any(endpoint == p or endpoint.startswith(p + "/") for p in ("/v1/jobs", *local))
    ):
        raise InvalidRequest(
            "'endpoint' must be a POST route of this proxy, e.g. '/v1/chat/completions'",
            param="endpoint",
        )
    return endpoint


async def submit(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    length = request.content_length
    limit = service.settings.max_body_bytes
    if length is not None and length > limit:
        raise PayloadTooLarge(f"A job request may be at most {limit} bytes")
    raw = await request.read()  # a chunked body has no Content-Length to check first
    if len(raw) > limit:
        raise PayloadTooLarge(f"A job request may be at most {limit} bytes")
    data = parse_json_object(raw)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field(s) {unknown}", param=unknown[0])
    body = data.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("'body' must be the JSON object of the request", param="body")
    options = check_options(data, service.settings)
    identity: Identity = request[IDENTITY]
    call = request.app[DOOR].build_call(
        identity=identity,
        method="POST",
        path=_endpoint(data, local=_EMULATED if request.app[BATCHES] is not None else ()),
        headers=request.headers,
        body=orjson.dumps(body),
        data=body,
    )
    sub = Submission(call=call, idempotency_key=_idempotency_key(request), **options)
    job, created = await service.submit(sub)
    return _accepted(job, created)


async def get_job(request: web.Request) -> web.StreamResponse:
    job = await _service(request).get(request[IDENTITY], request.match_info["job_id"])
    return _json(job.public())


async def job_content(request: web.Request) -> web.StreamResponse:
    """The completed job's answer as the upstream sent it: its bytes and its content type."""
    job = await _service(request).get(request[IDENTITY], request.match_info["job_id"])
    if job.status != "completed" or job.result is None or "response" not in job.result:
        raise InvalidRequest(
            f"The job is {job.status}: only a completed job has content",
            code="job_not_completed",
        )
    response: dict[str, Any] = job.result["response"]
    content_type = response.get("content_type") or "application/json"
    if "body_base64" in response:
        body = base64.b64decode(response["body_base64"])
    elif isinstance(response.get("body"), str) and "content_type" in response:
        body = response["body"].encode()
    else:
        body = orjson.dumps(response.get("body"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _limit(request: web.Request) -> int:
    text = request.query.get("limit", "20")
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    return limit


async def list_jobs(request: web.Request) -> web.StreamResponse:
    status = request.query.get("status")
    if status is not None and status not in _STATUSES:
        raise InvalidRequest(f"'status' must be one of {sorted(_STATUSES)}", param="status")
    jobs, more = await _service(request).page(
        request[IDENTITY], limit=_limit(request), after=request.query.get("after"), status=status
    )
    return _json(
        {
            "object": "list",
            "data": [job.public() for job in jobs],
            "first_id": jobs[0].id if jobs else None,
            "last_id": jobs[-1].id if jobs else None,
            "has_more": more,
        }
    )


async def cancel_job(request: web.Request) -> web.StreamResponse:
    job = await _service(request).cancel(request[IDENTITY], request.match_info["job_id"])
    return _json(job.public())


async def delete_job(request: web.Request) -> web.StreamResponse:
    job_id = request.match_info["job_id"]
    await _service(request).delete(request[IDENTITY], job_id)
    return _json({"id": job_id, "object": "job.deleted", "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", submit)
    app.router.add_get("/v1/jobs", list_jobs, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}", get_job, allow_head=False)
    app.router.add_get("/v1/jobs/{job_id}/content", job_content, allow_head=False)
    app.router.add_delete("/v1/jobs/{job_id}", delete_job)
    app.router.add_post("/v1/jobs/{job_id}/cancel", cancel_job)
