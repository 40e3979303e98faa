"""The container files: what they publish, which port they listen on, how they check health."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from proxy.config import load_config
from tests.conftest import Proxy
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instruction(name: str) -> str:
    """The text of the Dockerfile's (last) ``name`` instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    assert lines, name
    return lines[-1][len(name) + 1 :].strip()


def test_compose_publishes_on_loopback_only() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ports = compose["services"]["proxy"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports)


def test_the_port_is_the_configs() -> None:
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["llm-proxy"]
    assert json.loads(dockerfile_instruction("CMD")) == ["--host", "0.0.0.0"]
    example = ROOT / "config.example.yaml"
    assert load_config(example, env={}).server.port == 8080
    assert load_config(example, env={"LLM_PROXY_PORT": "9001"}).server.port == 9001


def run_healthcheck(port: int) -> int:
    command = dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["LLM_PROXY_PORT"] = str(port)
    return subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, timeout=30
    ).returncode


def test_healthcheck_asks_the_port_in_llm_proxy_port(proxy: Proxy) -> None:
    assert run_healthcheck(proxy.live.port) == 0
    assert run_healthcheck(free_port()) != 0
