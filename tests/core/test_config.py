"""Config validation: each mistake stops the start, naming key, value and expectation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, Settings, load_config, parse_settings

UP = {"name": "a", "base_url": "http://127.0.0.1:1/v1"}


def error_of(data: object, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, env=env or {})
    return str(info.value)


def test_no_config_gives_builtin_defaults() -> None:
    settings = load_config(None, env={})
    assert [u.base_url for u in settings.upstreams] == ["https://api.openai.com/v1"]
    assert settings.default_upstream == "openai"
    assert settings.auth.mode == "passthrough"
    assert settings.server.port == 8080


def test_unknown_key_is_a_mistake() -> None:
    msg = error_of({"server": {"prot": 9000}})
    assert "server.prot" in msg and "unknown key" in msg


def test_wrong_type_names_path_value_and_expectation() -> None:
    msg = error_of({"server": {"port": "eighty"}})
    assert "server.port" in msg and "'eighty'" in msg and "integer" in msg


def test_bad_url_in_a_list_item() -> None:
    msg = error_of({"upstreams": [{"name": "a", "base_url": "ftp://x"}]})
    assert "upstreams[0].base_url" in msg and "'ftp://x'" in msg and "http" in msg


def test_missing_required_key() -> None:
    assert "upstreams[0].base_url: required key is missing" in error_of(
        {"upstreams": [{"name": "a"}]}
    )


def test_secret_values_are_not_echoed_in_errors() -> None:
    msg = error_of({"upstreams": [{**UP, "api_key": ["sk-secret-value"]}]})
    assert "upstreams[0].api_key" in msg and "sk-secret-value" not in msg


def test_cross_checks() -> None:
    assert "routing.default_upstream" in error_of(
        {"upstreams": [UP], "routing": {"default_upstream": "b"}}
    )
    assert "unique" in error_of({"upstreams": [UP, UP]})
    assert "auth.keys" in error_of({"auth": {"mode": "keys"}})
    assert "redis.url" in error_of({"cache": {"backend": "redis"}})


def test_env_interpolation_with_and_without_default() -> None:
    env = {"BASE": "http://10.0.0.1:8000/v1"}
    settings = parse_settings(
        {"upstreams": [{"name": "a", "base_url": "${BASE}", "api_key": "${KEY:-none}"}]}, env=env
    )
    assert settings.upstreams[0].base_url == "http://10.0.0.1:8000/v1"
    assert settings.upstreams[0].api_key == "none"
    msg = error_of({"upstreams": [{"name": "a", "base_url": "${MISSING}"}]})
    assert "upstreams[0].base_url" in msg and "MISSING" in msg


def test_single_upstream_is_the_default() -> None:
    assert parse_settings({"upstreams": [UP]}, env={}).default_upstream == "a"
    two = parse_settings({"upstreams": [UP, {**UP, "name": "b"}]}, env={})
    assert two.default_upstream is None


def test_yaml_errors_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy, env={})


def test_env_var_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 9999\n")
    assert load_config(None, env={"LLM_PROXY_CONFIG": str(path)}).server.port == 9999


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = load_config(root / "config.example.yaml", env={})
    assert isinstance(settings, Settings)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstreams:\n  - name: a\n    base_url: http://127.0.0.1:1/v1\n    api_key: ${K}\n"
        "auth:\n  mode: keys\n  keys: [{name: team, key: sk-client-secret}]\n"
        "redis:\n  url: redis://:hunter2@127.0.0.1:6379/0\n"
    )
    out = _cli("check-config", str(path), env={"K": "sk-upstream-secret"})
    assert out.returncode == 0, out.stderr
    dumped = json.loads(out.stdout)
    assert dumped["upstreams"][0]["api_key"] == "***"
    assert dumped["auth"]["keys"][0] == {"name": "team", "key": "***", "sha256": None}
    for secret in ("sk-upstream-secret", "sk-client-secret", "hunter2"):
        assert secret not in out.stdout


def test_check_config_reports_mistakes_with_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 70000\n")
    out = _cli("check-config", str(path))
    assert out.returncode == 2
    assert "server.port" in out.stderr and "70000" in out.stderr


def test_start_with_a_bad_config_stops_with_the_message(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  eviction: random\n")
    out = _cli("--config", str(path))
    assert out.returncode == 2
    assert "cache.eviction" in out.stderr and "'random'" in out.stderr


def test_empty_interpolated_secrets_and_urls_mean_unset() -> None:
    settings = parse_settings(
        {
            "upstreams": [{**UP, "api_key": "${OPENAI_API_KEY:-}"}],
            "redis": {"url": "${REDIS_URL:-}"},
            "jobs": {"webhook_secret": "${SECRET:-}"},
        },
        env={},
    )
    assert settings.upstreams[0].api_key is None
    assert settings.redis.url is None
    # An empty secret would sign webhooks with an empty key: it must be off instead.
    assert settings.jobs.webhook_secret is None


def test_check_config_masks_header_values_and_url_passwords(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstreams:\n"
        "  - name: azure\n"
        "    base_url: https://gw-user:gw-pass-secret@gw.example.com/v1\n"
        "    headers: {api-key: azure-header-secret, Authorization: Bearer sk-header-secret}\n"
        "  - name: token\n"
        "    base_url: https://sk-userinfo-token@other.example.com/v1\n"
    )
    out = _cli("check-config", str(path))
    assert out.returncode == 0, out.stderr
    dumped = json.loads(out.stdout)
    azure, token = dumped["upstreams"]
    assert azure["headers"] == {"api-key": "***", "Authorization": "***"}
    assert azure["base_url"] == "https://gw-user:***@gw.example.com/v1"
    assert token["base_url"] == "https://***@other.example.com/v1"
    for secret in ("azure-header-secret", "sk-header-secret", "gw-pass-secret", "sk-userinfo"):
        assert secret not in out.stdout


def test_header_values_and_url_passwords_are_not_echoed_in_errors() -> None:
    msg = error_of({"upstreams": [{**UP, "headers": {"api-key": ["sk-header-secret"]}}]})
    assert "upstreams[0].headers.api-key" in msg and "sk-header-secret" not in msg
    msg = error_of({"upstreams": [{**UP, "headers": "Authorization: Bearer sk-header-secret"}]})
    assert "upstreams[0].headers" in msg and "sk-header-secret" not in msg
    msg = error_of({"upstreams": [{**UP, "base_url": "ftp://u:url-pass-secret@host/v1"}]})
    assert "upstreams[0].base_url" in msg and "ftp://u:***@host/v1" in msg
    assert "url-pass-secret" not in msg


def test_yaml_syntax_errors_name_the_place_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "upstreams:\n  - name: a\n    headers: {x: [1, 2\n    api_key: sk-in-the-line\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    msg = str(info.value)
    assert str(path) in msg and "line 4, column 12" in msg and "expected ',' or ']'" in msg
    assert "sk-in-the-line" not in msg and "\n" not in msg


def test_a_key_written_twice_is_a_mistake(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  port: 9000\n  host: 127.0.0.1\n  port: 9001\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "duplicate key 'port'" in str(info.value) and "line 4" in str(info.value)
    # A merge key may still override what it merges.
    path.write_text(
        "upstreams:\n  - &a {name: a, base_url: 'http://127.0.0.1:1/v1'}\n  - <<: *a\n    name: b\n"
    )
    assert [u.name for u in load_config(path, env={}).upstreams] == ["a", "b"]


def test_pass_client_key_is_a_per_upstream_switch() -> None:
    settings = parse_settings(
        {"upstreams": [UP, {**UP, "name": "local", "pass_client_key": False}]}, env={}
    )
    assert [u.pass_client_key for u in settings.upstreams] == [True, False]
    msg = error_of({"upstreams": [{**UP, "pass_client_key": "sometimes"}]})
    assert "upstreams[0].pass_client_key" in msg and "bool" in msg
