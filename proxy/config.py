"""Typed, validated settings. ``load_config`` is the only place that reads YAML or the environment.

A config file is YAML; ``${VAR}`` and ``${VAR:-default}`` in string values are taken from the
environment. Unknown keys are mistakes: a typo stops the start with a message that names the key
path, the bad value and what was expected.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AuthKey",
    "AuthSettings",
    "BatchesSettings",
    "BatchingSettings",
    "CacheSettings",
    "ConfigError",
    "FilesSettings",
    "JobsSettings",
    "LimitsSettings",
    "RedisSettings",
    "RoutingSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "load_config",
    "masked_dump",
    "parse_settings",
]

DEFAULT_CACHE_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/responses",
)


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _empty_is_unset(value: object) -> object:
    """``${VAR:-}`` gives an empty string: for optional secrets and URLs that means unset (an
    empty webhook secret must never sign anything)."""
    return None if value == "" else value


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)
    max_body_bytes: int = Field(10 * 1024 * 1024, gt=0)
    #: Time allowed to read a client's request body.
    body_read_timeout_s: float = Field(60.0, gt=0)
    #: Seconds to finish in-flight requests on shutdown.
    shutdown_timeout_s: float = Field(10.0, ge=0)
    #: A client connection with no complete request for this long is closed: an idle keep-alive,
    #: or headers trickling in (slowloris). aiohttp alone would keep it for an hour.
    idle_timeout_s: float = Field(75.0, gt=0)
    #: ``/readyz`` answers 503 while a Redis-backed part is degraded (default: 200, naming it).
    ready_requires_redis: bool = False
    #: The request log: one structured line per request (replaces aiohttp's access log).
    access_log: bool = True
    #: ``auto``: JSON lines when stderr is not a terminal, readable text when it is.
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: Put request and answer bodies (prompts, completions) in the request log.
    log_bodies: bool = False
    #: Per-request metrics (counts, latency histograms); off only to measure what they cost.
    request_metrics: bool = True
    #: Worker processes on one port; ``auto``: one per CPU this process may run on.
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = 1

    @property
    def worker_count(self) -> int:
        """``workers`` as a number (``auto`` resolved against this process's CPU affinity)."""
        if self.workers == "auto":
            return (
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else os.cpu_count() or 1
            )
        return self.workers


#: Headers an upstream's ``headers`` may not set: the proxy frames and decodes the exchange.
_PROXY_OWNED_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "accept-encoding",
        "expect",
    }
)


class UpstreamSettings(_Section):
    name: str = Field(min_length=1)
    base_url: str
    api_key: str | None = None
    _api_key_empty = field_validator("api_key", mode="before")(_empty_is_unset)
    #: Exact model names and glob patterns (``gpt-4o*``) this upstream serves.
    models: tuple[str, ...] = ()
    connect_timeout_s: float = Field(10.0, gt=0)
    #: Longest wait for the first byte of the answer, and between two chunks of a stream.
    first_byte_timeout_s: float = Field(120.0, gt=0)
    total_timeout_s: float = Field(600.0, gt=0)
    max_connections: int = Field(256, ge=1)
    #: Micro-batching of embeddings/completions towards this upstream.
    batching: bool = True
    #: Extra headers sent with every request (e.g. an Azure ``api-version`` gateway header).
    #: Their values are treated as secrets: masked by ``check-config``, never echoed in errors.
    headers: dict[str, str] = Field(default_factory=dict)
    #: In passthrough mode, forward the client's own credential here. ``false``: this upstream
    #: only ever gets its ``api_key`` (keeps an OpenAI key away from a local or third-party server).
    pass_client_key: bool = True
    #: Ask for usage in every chat/completions stream (``stream_options.include_usage``), so the
    #: cache can answer JSON requests from it; clients that did not ask get none. ``false`` for
    #: servers that refuse ``stream_options``.
    stream_usage: bool = True
    #: The header this upstream's own ``api_key`` goes in: ``authorization`` (``Bearer``) or
    #: ``api-key`` (Azure OpenAI). A client's own credential keeps the header it came in.
    auth_header: Literal["authorization", "api-key"] = "authorization"

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in _PROXY_OWNED_HEADERS:
                raise ValueError(f"{name!r} is set by the proxy itself (framing and encoding)")
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a header name")
        for name, text in value.items():
            if "\r" in text or "\n" in text:  # (the value is not echoed: it may be a secret)
                raise ValueError(f"the value of {name!r} holds a line break")
        return value


class RoutingSettings(_Section):
    #: Where requests go whose model no upstream lists (and non-JSON requests). Unset with a
    #: single upstream: that one.
    default_upstream: str | None = None
    #: Rewrite a client's model name before routing and forwarding.
    model_aliases: dict[str, str] = Field(default_factory=dict)
    #: How long the merged ``GET /v1/models`` answer is reused.
    models_cache_s: float = Field(60.0, ge=0)


class AuthKey(_Section):
    name: str = Field(min_length=1)
    key: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> AuthKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("expected exactly one of 'key' or 'sha256'")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ValueError("expected 'sha256' to be 64 hex digits")
        return self

    @property
    def digest(self) -> str:
        if self.sha256 is not None:
            return self.sha256.lower()
        assert self.key is not None
        return hashlib.sha256(self.key.encode()).hexdigest()


class AuthSettings(_Section):
    mode: Literal["passthrough", "keys"] = "passthrough"
    keys: tuple[AuthKey, ...] = ()
    #: Keys allowed on admin routes (``DELETE /v1/cache``).
    admin_keys: tuple[AuthKey, ...] = ()
    #: Passthrough: send an upstream's ``api_key`` for a keyless request from any address.
    #: ``false``: only from loopback; other keyless callers get 401.
    lend_upstream_key: bool = False

    @model_validator(mode="after")
    def _keys_given(self) -> AuthSettings:
        if self.mode == "keys" and not self.keys:
            raise ValueError("auth.mode 'keys' needs at least one entry in auth.keys")
        return self


class RedisSettings(_Section):
    url: str | None = None
    _url_empty = field_validator("url", mode="before")(_empty_is_unset)
    key_prefix: str = "llmproxy"
    #: Bound on each cache read/write; a slower Redis counts as down for the cache.
    op_timeout_ms: float = Field(50.0, gt=0)
    #: After a failure the cache stops trying Redis for this long.
    breaker_cooldown_s: float = Field(5.0, ge=0)
    #: ``redis.url`` names one node of a Redis Cluster (the cache then spreads its keys over the
    #: cluster's slots and never sends a cross-slot multi-key command).
    cluster: bool = False
    #: TLS (a ``rediss://`` url): CA bundle that signs the server's certificate (default: the
    #: system's), a client certificate and key for servers that ask for one, and whether to
    #: verify the server's certificate and host name at all.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    _tls_empty = field_validator("tls_ca_file", "tls_cert_file", "tls_key_file", mode="before")(
        _empty_is_unset
    )


class CacheSettings(_Section):
    enabled: bool = True
    backend: Literal["memory", "redis"] = "memory"
    routes: tuple[str, ...] = DEFAULT_CACHE_ROUTES
    default_ttl_s: float = Field(3600.0, gt=0)
    #: Per-route TTL overrides, by path.
    route_ttl_s: dict[str, float] = Field(default_factory=dict)
    #: Share entries between credentials (off: every tenant has its own cache).
    shared: bool = False
    only_deterministic: bool = False
    ignore_fields: tuple[str, ...] = ("user",)
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    eviction: Literal["lru", "lfu", "fifo"] = "lru"
    #: Redis values above this size are zlib-compressed.
    compress_min_bytes: int = Field(2048, ge=0)
    key_version: int = Field(1, ge=1)
    #: Larger responses are passed through but not stored (a stream stops being recorded).
    max_entry_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    #: Longest life of an entry: every TTL (``X-Cache-TTL``, route and default TTLs) is clamped
    #: to it. At most ten years, which Redis can always take as a ``PX`` value.
    max_ttl_s: float = Field(30 * 86400.0, gt=0, le=10 * 365 * 86400.0)


class RouteBatching(_Section):
    #: Batch this route at all (``batching.enabled`` and the upstream's ``batching`` too).
    enabled: bool = True
    max_wait_ms: float = Field(5.0, ge=0)
    max_batch_size: int = Field(64, ge=1)
    max_batch_tokens: int = Field(8192, ge=1)
    #: ``both``: flush when full or when the window ends; ``window``: only on the window;
    #: ``size``: only when full (and after ``max_wait_ms`` as a safety bound).
    strategy: Literal["both", "window", "size"] = "both"


class BatchingSettings(_Section):
    enabled: bool = True
    embeddings: RouteBatching = RouteBatching()
    completions: RouteBatching = RouteBatching(max_batch_size=16)


class CoalescingSettings(_Section):
    enabled: bool = True
    #: Across replicas: how long a replica waits for another's claimed call before its own.
    cross_replica_wait_s: float = Field(30.0, gt=0)
    claim_ttl_s: float = Field(10.0, gt=0)


class RateLimit(_Section):
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)


class JobsSettings(_Section):
    enabled: bool = True
    #: ``auto``: Redis when ``redis.url`` is set, else memory.
    store: Literal["auto", "memory", "redis"] = "auto"
    concurrency: int = Field(16, ge=1)
    max_attempts: int = Field(5, ge=1)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    #: Per upstream name.
    rate_limit: dict[str, RateLimit] = Field(default_factory=dict)
    result_ttl_s: float = Field(86400.0, gt=0)
    max_queued_per_tenant: int = Field(10_000, ge=1)
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    #: A running job's claim is renewed while it runs; a dead worker's job is retaken after this.
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(0.5, gt=0)
    webhook_secret: str | None = None
    _secret_empty = field_validator("webhook_secret", mode="before")(_empty_is_unset)
    #: Host patterns (globs) that callback URLs may point at; none by default.
    callback_allow: tuple[str, ...] = ()
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_timeout_s: float = Field(10.0, gt=0)
    #: How long an ``Idempotency-Key`` names the job it first created.
    idempotency_ttl_s: float = Field(86400.0, gt=0)
    #: Bound on each job-store operation; a slower Redis counts as down (503 at submission).
    store_timeout_s: float = Field(2.0, gt=0)
    #: ``POST /v1/jobs/{id}/cancel`` on a running job waits this long for it to stop.
    cancel_wait_s: float = Field(5.0, ge=0)


class LimitsSettings(_Section):
    """Request bounds checked before anything goes upstream (400 beyond them)."""

    #: Nesting of objects and arrays in a JSON request body.
    max_json_depth: int = Field(64, ge=2)
    #: Items in ``messages`` (no OpenAI limit is documented: a generous bound).
    max_messages: int = Field(10_000, ge=1)
    #: Items in an ``input`` array (OpenAI allows 2,048 per embeddings request).
    max_inputs: int = Field(2048, ge=1)


class FilesSettings(_Section):
    """``/v1/files`` of the Batch API emulation (``batches.mode: emulate``)."""

    #: Larger uploads get 413 (OpenAI allows 200 MB).
    max_bytes: int = Field(200 * 1024 * 1024, gt=0)
    #: Files (inputs and a batch's output/error files) are deleted this long after creation.
    ttl_s: float = Field(30 * 86400.0, gt=0)


class BatchesSettings(_Section):
    """``/v1/batches``: emulated on top of the job machinery, or passed to the default upstream."""

    mode: Literal["emulate", "passthrough"] = "emulate"
    #: Requests per input file; more gets 400 at ``batches.create`` (OpenAI allows 50,000).
    max_lines: int = Field(50_000, ge=1)
    #: The length of the ``24h`` completion window (shorter only for tests and demos).
    completion_window_s: float = Field(86400.0, gt=0)
    #: Lines of batches in flight at once per replica (bounded admission: jobs keep their own
    #: ``jobs.concurrency`` workers, so a large batch cannot starve them).
    concurrency: int = Field(128, ge=1)
    #: Batches one replica runs at once (they share ``concurrency``).
    max_running: int = Field(4, ge=1)
    #: A dead replica's batch is taken over by another after this.
    lease_s: float = Field(30.0, gt=0)
    poll_interval_s: float = Field(1.0, gt=0)


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    upstreams: tuple[UpstreamSettings, ...] = (
        UpstreamSettings(name="openai", base_url="https://api.openai.com/v1"),
    )
    routing: RoutingSettings = RoutingSettings()
    auth: AuthSettings = AuthSettings()
    redis: RedisSettings = RedisSettings()
    cache: CacheSettings = CacheSettings()
    coalescing: CoalescingSettings = CoalescingSettings()
    batching: BatchingSettings = BatchingSettings()
    jobs: JobsSettings = JobsSettings()
    limits: LimitsSettings = LimitsSettings()
    files: FilesSettings = FilesSettings()
    batches: BatchesSettings = BatchesSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        if not self.upstreams:
            raise ValueError("at least one upstream is needed")
        default = self.routing.default_upstream
        if default is not None and default not in names:
            raise ValueError(f"routing.default_upstream {default!r} is not one of {names}")
        for name in self.jobs.rate_limit:
            if name not in names:
                raise ValueError(f"jobs.rate_limit names unknown upstream {name!r}")
        needs_redis = self.cache.enabled and self.cache.backend == "redis"
        if (needs_redis or self.jobs.store == "redis") and not self.redis.url:
            raise ValueError("a Redis backend is selected but redis.url is not set")
        return self

    @property
    def default_upstream(self) -> str | None:
        """The upstream for unmatched models: the configured one, or the only one there is."""
        if self.routing.default_upstream is not None:
            return self.routing.default_upstream
        return self.upstreams[0].name if len(self.upstreams) == 1 else None

    @property
    def jobs_on_redis(self) -> bool:
        return self.jobs.store == "redis" or (self.jobs.store == "auto" and bool(self.redis.url))


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(value: Any, env: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"config error at {path or '<root>'}: environment variable {name} is not set "
                f"(write ${{{name}:-default}} to give a default)"
            )

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _secret_name(name: str) -> bool:
    name = name.lower()
    return name in ("key", "password", "secret", "token") or name.endswith(
        ("_key", "_secret", "_token", "_password")
    )


def _is_secret(loc: tuple[Any, ...]) -> bool:
    """Secret by name (``api_key``), or anything under a ``headers`` mapping (``api-key``,
    ``Authorization`` and the like live there)."""
    return any(isinstance(p, str) and (_secret_name(p) or p == "headers") for p in loc)


def _is_url(key: object) -> bool:
    return isinstance(key, str) and key.lower().endswith("url")


_USERINFO = re.compile(r"//([^@/?#]*)@")


def _mask_userinfo(url: str) -> str:
    """``scheme://user:***@host``: the password of a URL's userinfo hidden (a lone user name,
    often a token, hidden whole)."""

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match.group(1).partition(":")
        return f"//{user}:***@" if colon else "//***@"

    return _USERINFO.sub(hide, url, count=1)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _shown_input(loc: tuple[Any, ...], value: object) -> str:
    if _is_secret(loc):
        return "***"
    if loc and _is_url(loc[-1]) and isinstance(value, str):
        return repr(_mask_userinfo(value))
    return repr(value)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
        where = _format_loc(loc)
        value = _shown_input(loc, err.get("input"))
        if len(value) > 80:
            value = value[:77] + "..."
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"config error at {where}: unknown key (check the spelling)")
        elif err["type"] == "missing":
            lines.append(f"config error at {where}: required key is missing")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            lines.append(f"config error at {where}: {msg}")
        else:
            lines.append(f"config error at {where}: got {value}, expected: {msg}")
    return "\n".join(lines)


def parse_settings(data: Any, env: Mapping[str, str] | None = None) -> Settings:
    """Validate an already-parsed mapping (after ``${VAR}`` interpolation)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config error at <root>: expected a mapping of sections")
    data = _interpolate(data, os.environ if env is None else env, "")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the YAML file at ``path``; ``None`` gives the built-in defaults."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get("LLM_PROXY_CONFIG") or None
    if path is None:
        return Settings()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(path, exc)) from None
    return parse_settings(data, env)


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping (the last one silently won)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base`` may override what it merges
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(path: str | Path, exc: yaml.YAMLError) -> str:
    """Where and what, never the offending source line (it may hold a secret)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return (
            f"config file {path} is not valid YAML: line {mark.line + 1}, "
            f"column {mark.column + 1}: {exc.problem}"
        )
    return f"config file {path} is not valid YAML ({type(exc).__name__})"


def _mask(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        if key == "headers":
            return dict.fromkeys(value, "***")
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if isinstance(value, str) and value and _secret_name(key):
        return "***"
    if _is_url(key) and isinstance(value, str):
        return _mask_userinfo(value)
    return value


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The effective settings with secrets replaced by ``***``."""
    return _mask(settings.model_dump(mode="json"))  # type: ignore[no-any-return]
