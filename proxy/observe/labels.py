"""Bounded label values: a client must not be able to grow the metrics' series without end."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from ..config import Settings

__all__ = ["ModelLabels", "RouteLabels"]

#: Paths of the OpenAI API kept whole as a route label.
KNOWN_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/responses",
        "/v1/models",
        "/v1/files",
        "/v1/batches",
        "/v1/uploads",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/images/variations",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/fine_tuning/jobs",
        "/v1/vector_stores",
        "/v1/assistants",
        "/v1/threads",
        "/v1/realtime/sessions",
    }
)
#: Deeper paths under these (``/v1/files/{id}/content``) become ``/v1/<name>/*``.
KNOWN_PREFIXES = frozenset(p.split("/")[2] for p in KNOWN_PATHS)
_MEMO_MAX = 4096


class RouteLabels:
    """The ``route`` label: the app's own route pattern (``/v1/jobs/{job_id}``), a known OpenAI
    path, ``/v1/<known>/*`` for deeper ones, or ``other``."""

    def __init__(self, *, catch_all: str = "/v1/{tail}") -> None:
        self.catch_all = catch_all
        self._memo: dict[str, str] = {}

    def of(self, request: web.Request) -> str:
        resource = request.match_info.route.resource
        if resource is None:
            return "other"
        canonical = resource.canonical
        if canonical != self.catch_all:
            return canonical
        path = request.path
        label = self._memo.get(path)
        if label is None:
            label = _proxied(path)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[path] = label
        return label


def _proxied(path: str) -> str:
    if path in KNOWN_PATHS:
        return path
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] == "v1" and parts[2] in KNOWN_PREFIXES:
        return f"/v1/{parts[2]}/*"
    return "other"


class ModelLabels:
    """The ``model`` label: names the config routes explicitly (exact upstream ``models``, alias
    names and targets) or an upstream listed, at most ``cap`` of them; anything else ``other``."""

    def __init__(self, settings: Settings, *, cap: int = 100) -> None:
        self.cap = cap
        self._known: set[str] = set()
        names: list[str] = []
        for up in settings.upstreams:
            names.extend(m for m in up.models if not any(c in m for c in "*?["))
        for alias, target in settings.routing.model_aliases.items():
            names += [alias, target]
        self.learn(names)

    def learn(self, names: Iterable[str]) -> None:
        for name in names:
            if len(self._known) >= self.cap:
                return
            self._known.add(name)

    def of(self, model: str | None) -> str:
        if model is None:
            return "none"
        return model if model in self._known else "other"
