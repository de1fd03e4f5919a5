"""Settings precedence and start-up refusal of bad values (exit code 2, one line each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent.settings import SettingsError, load_settings
from tests.conftest import REPO, wait_for


def test_precedence_defaults_file_env_flags(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "edge-agent.toml"
    config.write_text('http_port = 9001\nmax_queue = 3\ndevice_id = "from-file"\n')
    assert load_settings().http_port == 8080
    from_file = load_settings(config)
    assert (from_file.http_port, from_file.max_queue, from_file.device_id) == (9001, 3, "from-file")
    monkeypatch.setenv("EDGE_AGENT_HTTP_PORT", "9002")
    monkeypatch.setenv("EDGE_AGENT_MAX_QUEUE", "4")
    from_env = load_settings(config)
    assert (from_env.http_port, from_env.max_queue, from_env.device_id) == (9002, 4, "from-file")
    from_flags = load_settings(config, http_port=9003, max_queue=None)
    assert (from_flags.http_port, from_flags.max_queue) == (9003, 4)


def test_profiles_come_with_defaults_and_can_be_replaced(monkeypatch) -> None:
    assert {"reasoning", "math", "coding"} <= set(load_settings().profiles)
    monkeypatch.setenv(
        "EDGE_AGENT_PROFILES", '{"terse": {"system": "Be terse.", "temperature": 0}}'
    )
    assert set(load_settings().profiles) == {"terse"}


def test_secure_defaults() -> None:
    settings = load_settings()
    assert settings.http_host == "127.0.0.1"
    assert settings.log_prompts is False


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (["--http-port", "70000"], ["http_port=70000", "65535"]),
        (["--provider", "tpu"], ["provider=tpu", "'cpu'"]),
        (
            ["--model", "/nonexistent/model"],
            ["model=/nonexistent/model", "existing model directory"],
        ),
        (["--mqtt-url", "http://broker"], ["mqtt_url=http://broker", "mqtt://"]),
        (["--model-variant", "gpu-fp16"], ["model", "gpu-fp16", "cpu-int4"]),
    ],
)
def test_invalid_values_stop_start_up_with_exit_2(flags: list[str], names: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "serve", *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    for name in names:
        assert name in lines[0]


def test_missing_config_file_is_named() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(Path("/nonexistent.toml"))
    assert "config=/nonexistent.toml" in raised.value.lines[0]


def test_prompts_are_logged_only_when_configured(daemon_factory) -> None:
    secret = "the door code is 4711"
    for flags, logged in (((), False), (("--log-prompts",), True)):
        instance = daemon_factory(*flags)
        body = {"model": "tiny", "messages": [{"role": "user", "content": secret}], "max_tokens": 3}
        assert httpx.post(f"{instance.url}/v1/chat/completions", json=body).status_code == 200
        wait_for(lambda i=instance: any(e["event"] == "request finished" for e in i.logs))
        finished = next(e for e in instance.logs if e["event"] == "request finished")
        assert finished["completion_tokens"] == 3
        assert (secret in json.dumps(instance.logs)) is logged


def test_sections_take_tables_and_flat_names_win(tmp_path: Path, monkeypatch) -> None:
    """A `[section]` table in TOML sets the section; the flat name (env, flag) still wins."""
    config = tmp_path / "edge-agent.toml"
    config.write_text("[engine]\nmax_queue = 3\nmax_batch = 2\n[http]\nport = 9101\n")
    settings = load_settings(config)
    assert (settings.engine.max_queue, settings.engine.max_batch, settings.http.port) == (
        3,
        2,
        9101,
    )
    monkeypatch.setenv("EDGE_AGENT_MAX_QUEUE", "5")
    settings = load_settings(config, http_port=9102)
    assert (settings.engine.max_queue, settings.engine.max_batch) == (5, 2)
    assert settings.http.port == settings.http_port == 9102


def test_every_scalar_setting_has_a_flag() -> None:
    """The serve flags are generated from the settings: none is missing, none is extra."""
    from agent.cli import _parser
    from agent.settings import is_table, setting_fields

    serve = _parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {a.dest for a in serve._actions} - {"help", "config", "cloud", "first_token_timeout_s"}
    scalars = {name for name, info in setting_fields().items() if not is_table(info)}
    assert flags == scalars
    args = serve.parse_args(
        ["--no-metrics-require-key", "--default-model", "math", "--threads", "3"]
    )
    assert (args.metrics_require_key, args.default_model, args.intra_op_num_threads) == (
        False,
        "math",
        "3",
    )


def test_settings_know_where_each_value_came_from(tmp_path: Path, monkeypatch) -> None:
    """Remote configuration may override the config file, not the command line or env."""
    config = tmp_path / "edge-agent.toml"
    config.write_text("max_queue = 3\n[governor]\ncpu_enter_percent = 90\n")
    monkeypatch.setenv("EDGE_AGENT_MAX_BATCH", "2")
    settings = load_settings(config, http_port=9103)
    assert settings.sources == {
        "max_queue": "config file",
        "cpu_enter_percent": "config file",
        "max_batch": "environment",
        "http_port": "command line",
    }
