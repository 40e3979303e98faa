"""Wheels of what is installed here, so that a test can build a virtualenv without an index.

The container's build stage runs ``pip wheel . && pip install --no-index --find-links``; the
contract test runs the same commands offline, against a folder of wheels repacked from this
environment's installed distributions (the project's dependencies and its build backend).
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_SKIPPED = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json"}


def closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, their dependencies included (no extras)."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist
        for line in dist.requires or ():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def requirements_of(project: str) -> list[str]:
    """The names of ``project``'s own (not optional) requirements."""
    return [
        Requirement(line).name
        for line in metadata.distribution(project).requires or ()
        if "extra ==" not in line
    ]


def repack(dist: metadata.Distribution, into: Path) -> Path:
    """One installed distribution as a wheel (its files under site-packages, a fresh RECORD)."""
    files = [f for f in dist.files or () if not _outside(str(f))]
    info = next(f for f in files if f.parent.name.endswith(".dist-info")).parent
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [t.split("-") for t in re.findall(r"^Tag: (\S+)$", wheel_meta, re.M)]
    assert tags, f"{dist.metadata['Name']} was not installed from a wheel"
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))
    path = into / f"{info.name.removesuffix('.dist-info')}-{tag}.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for file in files:
            if file.parent == info and file.name in _SKIPPED:
                continue
            data = file.locate().read_bytes()  # type: ignore[union-attr]
            wheel.writestr(str(file), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{file},sha256={digest.decode()},{len(data)}")
        record.append(f"{info}/RECORD,,")
        wheel.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def _outside(name: str) -> bool:
    return name.startswith("..") or "__pycache__" in name or name.endswith(".pyc")


def build_wheelhouse(into: Path, *, project: str, build_backend: Iterable[str]) -> Path:
    """Wheels for ``project``'s requirements and its build backend, repacked into ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for dist in closure([*requirements_of(project), *build_backend]):
        repack(dist, into)
    return into
