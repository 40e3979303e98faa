"""``config.example.yaml`` names every setting: a key added to the models and not to the example
fails here, so the file's claim to document every key cannot drift."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from proxy.config import Settings, load_config, masked_dump

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"
#: A path step into the items of a list (``upstreams[]``) or the values of a mapping (``*``).
ITEM, VALUE = "[]", "*"


def _nested(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """The settings model inside a field's type, and how to step into it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "", annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        found = [n for n in map(_nested, args) if n is not None]
        return found[0] if found else None
    if origin in (tuple, list) and args and _nested(args[0]):
        return ITEM, _nested(args[0])[1]  # type: ignore[index]
    if origin is dict and _nested(args[1]):
        return VALUE, _nested(args[1])[1]  # type: ignore[index]
    return None


def model_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        yield path
        nested = _nested(field.annotation)
        if nested is not None:
            step, inner = nested
            yield from model_paths(inner, (*path, step) if step else path)


def dump_paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The key paths ``check-config`` prints (list items as ``[]``)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*prefix, key)
            yield from dump_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for item in value:
            yield from dump_paths(item, (*prefix, ITEM))


def named_in_example(path: tuple[str, ...], data: Any, text: str) -> bool:
    """A real key of the example; under an empty list or mapping (``auth.keys``,
    ``jobs.rate_limit``) the example can only show the item's keys in a comment."""
    node = data
    for step in path:
        if step in (ITEM, VALUE):
            items = node if isinstance(node, list) else list(node.values())
            if not items:
                return re.search(rf"[{{,\s]{re.escape(path[-1])}:", text) is not None
            node = items[0]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return False
    return True


def test_every_setting_is_named_in_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    paths = set(model_paths(Settings))
    printed = set(dump_paths(masked_dump(load_config(EXAMPLE, env={}))))
    assert printed <= paths  # the walk covers at least what check-config prints
    missing = sorted(".".join(p) for p in paths if not named_in_example(p, data, text))
    assert missing == [], f"add these keys to config.example.yaml: {missing}"
