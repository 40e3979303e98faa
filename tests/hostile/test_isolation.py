"""Tenant isolation: tenant B tries everything on tenant A's things, and gets nothing.

A's things: cache entries (JSON, stream, embeddings per input, ``/v1/responses``), calls in
flight (single flight), micro-batches, jobs, files, batches, stored responses, and the cache
purge. Every attempt is one row of :data:`ATTEMPTS`; the test runs the whole table in both auth
modes (passthrough with two client keys, ``keys`` with two named keys) and on both backends
(memory, Redis), and once more with an upstream that gets only its own key. Each run is
tallied in :data:`TALLY`; :func:`isolation_figure` gives "isolation attempts denied / tried"
(printed at the end of the pytest run by ``tests/hostile/conftest.py``).

"Denied" is what a tenant boundary means for each thing: a 404 (or 403 for an admin route), a
cache MISS with B's own upstream call, never joining A's flight or A's batch. For stored
responses in passthrough mode the upstream is the judge (B's request reaches it with B's own key,
never A's); in ``keys`` mode (or ``pass_client_key: false``) every tenant reaches the upstream
with its one key, so the proxy itself answers 404 for a response another tenant created.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.keys import AUTH
from proxy.responses.origins import Origin
from tests.conftest import KEY_A, KEY_B, Fake, Proxy, ProxyFactory
from tests.support.http import Raw, request
from tests.support.live import BackgroundLoop

ADMIN_KEY = "sk-admin-isolation-5d1e"
UPSTREAM_KEY = "sk-upstream-isolation-77aa"
CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
RESP = "/v1/responses"
EMB_MODEL = "text-embedding-3-small"

#: True: denied; None: does not apply to this configuration (not counted).
Check = Callable[["World"], bool | None]


@dataclass(frozen=True)
class Attempt:
    thing: str
    what: str
    check: Check


#: The table: what B tries, on which of A's things. Filled by :func:`attempt`, in file order.
ATTEMPTS: list[Attempt] = []
#: (configuration, thing, what) -> denied.
TALLY: dict[tuple[str, str, str], bool] = {}


def attempt(thing: str, what: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        ATTEMPTS.append(Attempt(thing, what, check))
        return check

    return register


def isolation_figure() -> tuple[int, int]:
    """``(denied, tried)`` over every configuration run so far."""
    return sum(TALLY.values()), len(TALLY)


# --- the world: a proxy, its fake upstream, and A's things --------------------------------------


@dataclass
class World:
    proxy: Proxy
    fake: Fake
    bg: BackgroundLoop
    #: The upstream gets its own key, never the client's: it cannot tell tenants apart.
    own_key: bool
    a: dict[str, str] = field(default_factory=dict)
    #: Another replica on the same Redis (Redis backend only).
    peer: Proxy | None = None
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4))

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | bytes | None = None,
        *,
        key: str = KEY_A,
        headers: dict[str, str] | None = None,
        via: Proxy | None = None,
    ) -> Raw:
        all_headers = {"Authorization": f"Bearer {key}", **(headers or {})}
        return request(method, f"{(via or self.proxy).url}{path}", body, all_headers)

    def later(
        self, method: str, path: str, body: dict[str, Any], *, key: str, via: Proxy | None = None
    ) -> Future[Raw]:
        return self.pool.submit(self.send, method, path, body, key=key, via=via)

    def calls(self, path: str) -> int:
        return int(self.bg.call(lambda: self.fake.state.calls[path]))

    def set_fake(self, **values: Any) -> None:
        def apply() -> None:
            for name, value in values.items():
                setattr(self.fake.state, name, value)

        self.bg.call(apply)

    def wait(self, predicate: Callable[[], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "condition not reached in time"
            time.sleep(0.005)

    def upstream_keys(self, path_prefix: str, since: int) -> list[str]:
        """The credential of every request to ``path_prefix`` the upstream got after ``since``."""
        requests = self.bg.call(lambda: list(self.fake.state.requests[since:]))
        return [
            next((v for k, v in r.headers.items() if k.lower() == "authorization"), "")
            for r in requests
            if r.path.startswith(path_prefix)
        ]

    def recorded(self) -> int:
        return int(self.bg.call(lambda: len(self.fake.state.requests)))


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def wait_job(world: World, job_id: str, *, key: str = KEY_A) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(world.send("GET", f"/v1/jobs/{job_id}", key=key).json())
        return found["status"] in ("completed", "failed", "cancelled")

    world.wait(done, timeout_s=20)
    return found


def wait_batch(world: World, batch_id: str, *, key: str = KEY_A) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(world.send("GET", f"/v1/batches/{batch_id}", key=key).json())
        return found["status"] in ("completed", "failed", "cancelled", "expired")

    world.wait(done, timeout_s=30)
    return found


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "isolation-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
            f"Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def setup_a(world: World) -> None:
    """A makes one of each of its things."""
    a = world.a
    assert world.send("POST", CHAT, chat("a json")).headers["x-cache"] == "MISS"
    streamed = world.send("POST", CHAT, chat("a stream", stream=True))
    assert streamed.body.endswith(b"data: [DONE]\n\n")
    streamed = world.send("POST", CHAT, chat("a stream only", stream=True))
    assert streamed.body.endswith(b"data: [DONE]\n\n")
    emb = world.send("POST", EMB, {"model": EMB_MODEL, "input": ["a alpha", "a beta"]})
    assert emb.status == 200
    emb = world.send("POST", EMB, {"model": EMB_MODEL, "input": ["a gamma", "a delta"]})
    assert emb.status == 200
    assert world.send("POST", CHAT, chat("a json kept")).headers["x-cache"] == "MISS"
    resp = world.send("POST", RESP, {"model": "gpt-4o-mini", "input": "a secret plan"})
    assert resp.status == 200
    # The fake's ids are a hash of the request (a real upstream's are random): the response B
    # tries to reach is one B never asks for identically, or B's own answer would carry its id.
    resp = world.send("POST", RESP, {"model": "gpt-4o-mini", "input": "a stored plan"})
    a["response"] = resp.json()["id"]
    job = world.send("POST", "/v1/jobs", {"endpoint": CHAT, "body": chat("a job")})
    a["job"] = job.json()["id"]
    assert wait_job(world, a["job"])["status"] == "completed"
    later = {"endpoint": CHAT, "body": chat("a later job"), "run_after": int(time.time()) + 3600}
    a["queued_job"] = world.send("POST", "/v1/jobs", later).json()["id"]
    line = {"custom_id": "a-1", "method": "POST", "url": CHAT, "body": chat("a batch line")}
    body, content_type = multipart(json.dumps(line).encode() + b"\n")
    upload = world.send("POST", "/v1/files", body, headers={"Content-Type": content_type})
    assert upload.status == 200, upload.body
    a["file"] = upload.json()["id"]
    batch = world.send(
        "POST",
        "/v1/batches",
        {"input_file_id": a["file"], "endpoint": CHAT, "completion_window": "24h"},
    )
    a["batch"] = batch.json()["id"]
    a["output_file"] = wait_batch(world, a["batch"])["output_file_id"]


# --- cache entries ------------------------------------------------------------------------------


def _misses(world: World, path: str, body: dict[str, Any]) -> bool:
    """B's identical request is a MISS answered by B's own upstream call."""
    before = world.calls(path)
    got = world.send("POST", path, body, key=KEY_B)
    missed = got.status == 200 and got.headers["x-cache"] == "MISS"
    return missed and world.calls(path) == before + 1


@attempt("cache entry", "identical chat request (JSON)")
def _cache_json(world: World) -> bool:
    return _misses(world, CHAT, chat("a json"))


@attempt("cache entry", "identical chat request (stream)")
def _cache_stream(world: World) -> bool:
    return _misses(world, CHAT, chat("a stream", stream=True))


@attempt("cache entry", "JSON request for A's recorded stream")
def _cache_cross_form(world: World) -> bool:
    return _misses(world, CHAT, chat("a stream only"))


@attempt("cache entry", "identical embeddings request")
def _cache_embeddings(world: World) -> bool:
    return _misses(world, EMB, {"model": EMB_MODEL, "input": ["a alpha", "a beta"]})


@attempt("cache entry", "one of A's embeddings inputs (per-input cache)")
def _cache_embedding_input(world: World) -> bool:
    return _misses(world, EMB, {"model": EMB_MODEL, "input": "a delta"})


@attempt("cache entry", "identical /v1/responses request")
def _cache_responses(world: World) -> bool:
    return _misses(world, RESP, {"model": "gpt-4o-mini", "input": "a secret plan"})


@attempt("cache entry", "Cache-Control: only-if-cached for A's request")
def _cache_only_if_cached(world: World) -> bool:
    before = world.calls(CHAT)
    got = world.send(
        "POST", CHAT, chat("a json kept"), key=KEY_B, headers={"Cache-Control": "only-if-cached"}
    )
    return got.status == 504 and world.calls(CHAT) == before


# --- calls in flight and micro-batches ----------------------------------------------------------


def _flight(world: World, body: dict[str, Any], tag: str, *, via: Proxy | None = None) -> bool:
    """B's identical request while A's is in flight makes its own call; A's own second request
    (the control) does join, so a leak could be seen. ``via``: B (and A's second) go to this
    replica."""
    world.set_fake(latency_ms=1000)  # room for the second request on a loaded machine
    try:
        outcomes = []
        for other in (KEY_A, KEY_B):
            body = {**body, "messages": [{"role": "user", "content": f"{tag} {other[-4:]}"}]}
            before = world.calls(CHAT)
            first = world.later("POST", CHAT, body, key=KEY_A)
            world.wait(lambda b=before: world.calls(CHAT) == b + 1)  # type: ignore[misc]
            second = world.send("POST", CHAT, body, key=other, via=via)
            first.result(10)
            outcomes.append((world.calls(CHAT) - before, second.headers.get("x-coalesced")))
    finally:
        world.set_fake(latency_ms=0)
    control, attempt_ = outcomes
    assert control == (1, "2"), f"control: A's own identical request did not join: {control}"
    return attempt_ == (2, None)


@attempt("call in flight", "identical chat request while A's is in flight (JSON)")
def _flight_json(world: World) -> bool:
    return _flight(world, chat(""), "flight json")


@attempt("call in flight", "identical chat request while A's is in flight (stream)")
def _flight_stream(world: World) -> bool:
    return _flight(world, chat("", stream=True), "flight stream")


@attempt("call in flight", "identical request on another replica while A's is in flight")
def _flight_replica(world: World) -> bool | None:
    if world.peer is None:
        return None
    return _flight(world, chat(""), "flight replica", via=world.peer)


@attempt("micro-batch", "embeddings request in the same batching window as A's")
def _micro_batch(world: World) -> bool:
    outcomes = []
    for tag, other in (("control", KEY_A), ("attempt", KEY_B)):
        before = world.calls(EMB)
        first = world.later("POST", EMB, {"model": EMB_MODEL, "input": f"{tag} a"}, key=KEY_A)
        second = world.later("POST", EMB, {"model": EMB_MODEL, "input": f"{tag} b"}, key=other)
        assert first.result(10).status == second.result(10).status == 200
        outcomes.append(world.calls(EMB) - before)
    assert outcomes[0] == 1, "control: A's two requests in one window were not merged"
    return outcomes[1] == 2


@attempt("micro-batch", "a batch of embeddings lines run beside A's batch")
def _batch_members(world: World) -> bool:
    """Batch API lines ride micro-batches too: A's and B's batches, run at the same time, are
    merged only with their own tenant's lines, and each merged call carries its owner's key."""
    since = world.recorded()
    batches = {}
    for owner, key in (("A", KEY_A), ("B", KEY_B)):
        lines = [
            {"custom_id": f"{owner}{i}", "method": "POST", "url": EMB,
             "body": {"model": EMB_MODEL, "input": f"batchmix {owner} {i}"}}
            for i in range(6)
        ]  # fmt: skip
        body, content_type = multipart(b"".join(json.dumps(x).encode() + b"\n" for x in lines))
        upload = world.send(
            "POST", "/v1/files", body, key=key, headers={"Content-Type": content_type}
        )
        create = {"input_file_id": upload.json()["id"], "endpoint": EMB, "completion_window": "24h"}
        batches[key] = world.send("POST", "/v1/batches", create, key=key).json()["id"]
    for key, batch_id in batches.items():
        assert wait_batch(world, batch_id, key=key)["status"] == "completed"
    requests = world.bg.call(lambda: list(world.fake.state.requests[since:]))
    calls = []
    for r in requests:
        if r.path != EMB:
            continue
        inputs = json.loads(r.body)["input"]
        inputs = [inputs] if isinstance(inputs, str) else inputs
        owners = {text.split()[1] for text in inputs}
        auth = next((v for k, v in r.headers.items() if k.lower() == "authorization"), "")
        calls.append((owners, len(inputs), auth))
    assert any(n > 1 for _, n, _ in calls), "control: no batch lines were merged at all"
    if world.own_key:
        return all(len(owners) == 1 for owners, _, _ in calls)
    expected = {"A": f"Bearer {KEY_A}", "B": f"Bearer {KEY_B}"}
    return all(len(o) == 1 and auth == expected[next(iter(o))] for o, _, auth in calls)


# --- jobs ---------------------------------------------------------------------------------------


def _not_found(got: Raw) -> bool:
    return got.status == 404 and got.json()["error"]["type"] == "invalid_request_error"


@attempt("job", "GET A's job")
def _job_get(world: World) -> bool:
    return _not_found(world.send("GET", f"/v1/jobs/{world.a['job']}", key=KEY_B))


@attempt("job", "GET A's job content")
def _job_content(world: World) -> bool:
    return _not_found(world.send("GET", f"/v1/jobs/{world.a['job']}/content", key=KEY_B))


@attempt("job", "cancel A's queued job")
def _job_cancel(world: World) -> bool:
    job_id = world.a["queued_job"]
    denied = _not_found(world.send("POST", f"/v1/jobs/{job_id}/cancel", key=KEY_B))
    return denied and world.send("GET", f"/v1/jobs/{job_id}").json()["status"] == "queued"


@attempt("job", "delete A's job")
def _job_delete(world: World) -> bool:
    job_id = world.a["job"]
    denied = _not_found(world.send("DELETE", f"/v1/jobs/{job_id}", key=KEY_B))
    return denied and world.send("GET", f"/v1/jobs/{job_id}").status == 200


@attempt("job", "list jobs")
def _job_list(world: World) -> bool:
    listed = world.send("GET", "/v1/jobs?limit=100", key=KEY_B).json()["data"]
    mine = world.send("GET", "/v1/jobs?limit=100").json()["data"]
    return {j["id"] for j in listed}.isdisjoint(world.a.values()) and len(mine) >= 2


def _same_as_unknown(world: World, path: str, a_id: str) -> bool:
    """A list paged after A's id answers as after an id that does not exist (no oracle)."""
    theirs = world.send("GET", f"{path}?after={a_id}", key=KEY_B)
    nobody = world.send("GET", f"{path}?after={a_id[:-4]}0000", key=KEY_B)
    return (theirs.status, theirs.json().get("data")) == (nobody.status, nobody.json().get("data"))


@attempt("job", "list jobs after A's job id")
def _job_cursor(world: World) -> bool:
    return _same_as_unknown(world, "/v1/jobs", world.a["job"])


@attempt("job", "same Idempotency-Key as A's job")
def _job_idempotency(world: World) -> bool:
    sub = {"endpoint": CHAT, "body": chat("idempotent"), "run_after": int(time.time()) + 3600}
    key = {"Idempotency-Key": "shared-idempotency-key"}
    mine = world.send("POST", "/v1/jobs", sub, headers=key)
    theirs = world.send("POST", "/v1/jobs", sub, key=KEY_B, headers=key)
    return (
        theirs.status == 202
        and "idempotent-replayed" not in theirs.headers
        and theirs.json()["id"] != mine.json()["id"]
    )


# --- files and batches --------------------------------------------------------------------------


@attempt("file", "GET A's file")
def _file_get(world: World) -> bool:
    return _not_found(world.send("GET", f"/v1/files/{world.a['file']}", key=KEY_B))


@attempt("file", "GET A's file content")
def _file_content(world: World) -> bool:
    return _not_found(world.send("GET", f"/v1/files/{world.a['file']}/content", key=KEY_B))


@attempt("file", "GET the content of A's batch output file")
def _file_output(world: World) -> bool:
    path = f"/v1/files/{world.a['output_file']}/content"
    return _not_found(world.send("GET", path, key=KEY_B)) and world.send("GET", path).status == 200


@attempt("file", "delete A's file")
def _file_delete(world: World) -> bool:
    file_id = world.a["file"]
    denied = _not_found(world.send("DELETE", f"/v1/files/{file_id}", key=KEY_B))
    return denied and world.send("GET", f"/v1/files/{file_id}").status == 200


@attempt("file", "list files")
def _file_list(world: World) -> bool:
    listed = world.send("GET", "/v1/files", key=KEY_B).json()["data"]
    return {f["id"] for f in listed}.isdisjoint(world.a.values())


@attempt("file", "list files after A's file id")
def _file_cursor(world: World) -> bool:
    return _same_as_unknown(world, "/v1/files", world.a["file"])


@attempt("file", "create a batch from A's input file")
def _file_batch(world: World) -> bool:
    body = {"input_file_id": world.a["file"], "endpoint": CHAT, "completion_window": "24h"}
    return _not_found(world.send("POST", "/v1/batches", body, key=KEY_B))


@attempt("batch", "GET A's batch")
def _batch_get(world: World) -> bool:
    return _not_found(world.send("GET", f"/v1/batches/{world.a['batch']}", key=KEY_B))


@attempt("batch", "cancel A's batch")
def _batch_cancel(world: World) -> bool:
    batch_id = world.a["batch"]
    denied = _not_found(world.send("POST", f"/v1/batches/{batch_id}/cancel", key=KEY_B))
    return denied and world.send("GET", f"/v1/batches/{batch_id}").json()["status"] == "completed"


@attempt("batch", "list batches")
def _batch_list(world: World) -> bool:
    listed = world.send("GET", "/v1/batches", key=KEY_B).json()["data"]
    return {b["id"] for b in listed}.isdisjoint(world.a.values())


@attempt("batch", "list batches after A's batch id")
def _batch_cursor(world: World) -> bool:
    return _same_as_unknown(world, "/v1/batches", world.a["batch"])


# --- stored responses ---------------------------------------------------------------------------


def _stored(world: World, method: str, path: str, body: dict[str, Any] | None = None) -> bool:
    """The upstream gets its own key: the proxy answers 404 itself; it gets the client's key:
    only B's own key reaches it (and it judges, as OpenAI does)."""
    since = world.recorded()
    got = world.send(method, path, body, key=KEY_B)
    seen = world.upstream_keys(RESP, since)
    if world.own_key:
        return _not_found(got) and seen == []
    return seen == [f"Bearer {KEY_B}"]


@attempt("stored response", "GET A's response")
def _response_get(world: World) -> bool:
    return _stored(world, "GET", f"{RESP}/{world.a['response']}")


@attempt("stored response", "GET A's response input items")
def _response_items(world: World) -> bool:
    return _stored(world, "GET", f"{RESP}/{world.a['response']}/input_items")


@attempt("stored response", "cancel A's response")
def _response_cancel(world: World) -> bool:
    return _stored(world, "POST", f"{RESP}/{world.a['response']}/cancel")


@attempt("stored response", "continue A's conversation (previous_response_id)")
def _response_chain(world: World) -> bool:
    body = {"model": "gpt-4o-mini", "input": "and?", "previous_response_id": world.a["response"]}
    return _stored(world, "POST", RESP, body)


@attempt("stored response", "cancel A's response through a job")
def _response_job(world: World) -> bool:
    """The job worker's calls go through the pipeline, not the door for stored responses."""
    since = world.recorded()
    sub = {"endpoint": f"{RESP}/{world.a['response']}/cancel", "body": {}}
    job = world.send("POST", "/v1/jobs", sub, key=KEY_B).json()
    done = wait_job(world, job["id"], key=KEY_B)
    seen = world.upstream_keys(RESP, since)
    if world.own_key:
        failed = done["status"] == "failed" and done["error"]["code"] == "not_found"
        return failed and seen == []
    return seen == [f"Bearer {KEY_B}"]


# --- the cache purge (last: then A's entries must all still be there) --------------------------


def _purge(world: World, query: str = "", headers: dict[str, str] | None = None) -> bool:
    got = world.send("DELETE", f"/v1/cache{query}", key=KEY_B, headers=headers)
    still = world.send("POST", CHAT, chat("a json")).headers["x-cache"] == "HIT"
    return got.status == 403 and got.json()["error"]["type"] == "permission_error" and still


@attempt("cache purge", "purge the whole cache")
def _purge_all(world: World) -> bool:
    return _purge(world)


@attempt("cache purge", "purge A's part by tenant id")
def _purge_tenant(world: World) -> bool:
    tenant = world.proxy.app[AUTH].identify({"Authorization": f"Bearer {KEY_A}"}).tenant
    return _purge(world, f"?tenant={tenant}")


@attempt("cache purge", "purge A's part by A's key")
def _purge_by_key(world: World) -> bool:
    return _purge(world, headers={"X-Cache-Tenant-Key": KEY_A})


@attempt("stored response", "delete A's response")
def _response_delete(world: World) -> bool:
    return _stored(world, "DELETE", f"{RESP}/{world.a['response']}")


# --- the run ------------------------------------------------------------------------------------

CONFIGS = [
    *(
        pytest.param(mode, backend, True, id=f"{mode}-{backend}")
        for mode in ("passthrough", "keys")
        for backend in ("memory", "redis")
    ),
    # Passthrough to an upstream that gets only its own key: as in keys mode, the upstream
    # cannot tell the tenants apart.
    pytest.param("passthrough", "memory", False, id="passthrough-own-key-memory"),
]


def _settings(mode: str, backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    auth: dict[str, Any] = {"mode": mode, "admin_keys": [{"name": "admin", "key": ADMIN_KEY}]}
    if mode == "keys":
        auth["keys"] = [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]
    config: dict[str, Any] = {
        "auth": auth,
        "cache": {"backend": backend},
        "batching": {"embeddings": {"max_wait_ms": 500, "strategy": "window"}},
        "jobs": {"poll_interval_s": 0.05, "backoff_base_s": 0.01},
        "batches": {"poll_interval_s": 0.05},
    }
    if backend == "redis":
        config["redis"] = {"url": request.getfixturevalue("redis_url")}
    return config


@pytest.mark.parametrize(("mode", "backend", "pass_client_key"), CONFIGS)
def test_tenant_b_gets_nothing_of_tenant_a(
    mode: str,
    backend: str,
    pass_client_key: bool,
    make_proxy: ProxyFactory,
    fake: Fake,
    bg: BackgroundLoop,
    request: pytest.FixtureRequest,
) -> None:
    config = _settings(mode, backend, request)
    upstream = {
        "name": "fake",
        "base_url": fake.url,
        "models": ["*"],
        "api_key": UPSTREAM_KEY,
        "pass_client_key": pass_client_key,
    }
    proxy = make_proxy({**config, "upstreams": [upstream]})
    world = World(proxy, fake, bg, own_key=mode == "keys" or not pass_client_key)
    if backend == "redis":
        world.peer = make_proxy({**config, "upstreams": [upstream]})
    name = request.node.callspec.id
    try:
        setup_a(world)
        leaks = []
        for row in ATTEMPTS:
            denied = row.check(world)
            if denied is None:
                continue
            TALLY[(name, row.thing, row.what)] = denied
            if not denied:
                leaks.append(f"{row.thing}: {row.what}")
    finally:
        world.pool.shutdown(wait=True)
    assert leaks == [], "\n".join(leaks)


def test_the_table_covers_every_kind_of_thing() -> None:
    """The figure means something only if the table keeps its rows."""
    things = {row.thing for row in ATTEMPTS}
    assert things == {
        "cache entry",
        "call in flight",
        "micro-batch",
        "job",
        "file",
        "batch",
        "stored response",
        "cache purge",
    }
    assert len(ATTEMPTS) >= 39


def test_an_origin_without_its_tenant_still_routes_and_denies_nobody() -> None:
    """Origins noted before the tenant was kept (two fields) still decode; with no owner known,
    the upstream stays the judge."""
    old = Origin.decode(b'["fake", "t_x:abc"]')
    assert old == Origin("fake", "t_x:abc")
    assert not old.denies(tenant="t_other", own_key=True)
    new = Origin.decode(Origin("fake", None, "t_a").encode())
    assert new is not None and new.tenant == "t_a"
    assert new.denies(tenant="t_b", own_key=True)
    assert not new.denies(tenant="t_a", own_key=True)
    assert not new.denies(tenant="t_b", own_key=False)  # B's own key: the upstream judges
