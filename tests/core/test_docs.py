"""The README says what the code does (the code's side is tested in test_models/test_routing)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _paragraph(text: str, start: str) -> str:
    at = text.index(start)
    end = text.find("\n\n", at)
    return " ".join(text[at : end if end != -1 else None].split())


def test_readme_routes_model_retrieval_by_model_not_to_the_default() -> None:
    routing = _paragraph(README.read_text(encoding="utf-8"), "Every method and path under")
    # test_retrieve_asks_the_upstream_that_serves_the_model: routed by the model in the path.
    assert re.search(r"`GET /v1/models/\{id\}`[^.;]*model", routing), routing
    # test_models_are_merged_across_upstreams: the list is every upstream's.
    assert re.search(r"`GET /v1/models` merges every upstream", routing), routing
    # And the sentence about the default upstream no longer claims every GET.
    default = next(s for s in routing.split(". ") if "default upstream, streamed" in s)
    assert default.startswith("Other "), default
