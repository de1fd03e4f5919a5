"""Model management: pull (hub or folder) with verification, verify, activate with a live
switch in the running daemon, remove, the memory check before load, and convert's plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from agent.models.catalog import load_catalog
from agent.models.convert import ConvertPlan
from tests.conftest import REPO, TINY, start_daemon, wait_for
from tests.hub_support import Hub
from tests.mqtt_support import Broker, Device

PHI4 = load_catalog()["phi-4-mini-instruct"]
FOLDER = PHI4.variant("cpu-int4").folder


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """The Phi-4-mini ONNX repository's CPU folder, holding the tiny model's files."""
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "cpu-int4", repo / FOLDER)
    served = Hub(PHI4.variant("cpu-int4").repo, repo)
    yield served
    served.close()


def hub_env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip


def test_pull_from_the_hub_verifies_every_file_then_verify_and_list(hub, tmp_path) -> None:
    state = str(tmp_path / "state")
    pulled = cli("models", "pull", "phi-4-mini-instruct", "--variant", "cpu-int4",
                 "--state-dir", state, env=hub_env(hub, tmp_path))  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    folder = tmp_path / "state" / "models" / "phi-4-mini-instruct" / hub.commit[:12]
    manifest = (folder / "manifest.toml").read_text()
    for served in hub.files():
        assert f'sha256 = "{served["sha256"]}"' in manifest  # the hub's hash, checked
        assert (folder / served["path"]).is_file()
    assert f'commit = "{hub.commit}"' in manifest
    assert 'hf_id = "microsoft/Phi-4-mini-instruct"' in manifest
    assert not list((tmp_path / "state" / "models" / ".partial").iterdir())  # moved in place
    assert cli("models", "verify", "phi-4-mini-instruct", "--state-dir", state).returncode == 0
    listed = cli("models", "list", "--state-dir", state).stdout
    assert f"cpu-int4-compact,cuda-int4,dml-int4 {hub.commit[:12]}" in listed
    data = folder / FOLDER / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-1] + b"\0")  # bit rot on the gateway
    broken = cli("models", "verify", "phi-4-mini-instruct", "--state-dir", state)
    assert broken.returncode == 1 and "model.onnx.data: sha256 differs" in broken.stderr


def test_a_corrupted_download_is_refused_and_nothing_installed(tmp_path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "cpu-int4", repo / FOLDER)
    hub = Hub(PHI4.variant("cpu-int4").repo, repo, corrupt="model.onnx.data")
    try:
        state = str(tmp_path / "state")
        pulled = cli("models", "pull", "phi-4-mini-instruct", "--variant", "cpu-int4",
                     "--state-dir", state, env=hub_env(hub, tmp_path))  # fmt: skip
    finally:
        hub.close()
    assert pulled.returncode == 1
    assert "model.onnx.data: sha256" in pulled.stderr and "not the expected" in pulled.stderr
    assert not (tmp_path / "state" / "models" / "phi-4-mini-instruct").exists()


def test_pull_refuses_when_the_disk_is_too_small(tmp_path) -> None:
    source = tmp_path / "usb"
    shutil.copytree(TINY / "cpu-int4", source)
    with (source / "model.onnx.data").open("r+b") as huge:  # sparse: bigger than the disk
        huge.truncate(shutil.disk_usage(tmp_path).free + (1 << 30))
    pulled = cli("models", "pull", "qwen2.5-0.5b-instruct", "--from", str(source),
                 "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert pulled.returncode == 1 and "not enough disk space" in pulled.stderr
    assert not (tmp_path / "state" / "models" / "qwen2.5-0.5b-instruct").exists()


def test_pull_of_an_embedding_model_says_how_to_serve_it(tmp_path) -> None:
    pulled = cli("models", "pull", "all-minilm-l6-v2", "--state-dir", str(tmp_path / "state"))
    assert pulled.returncode == 1 and "set embedding_model" in pulled.stderr
    assert not (tmp_path / "state" / "models").exists() or not any(
        (tmp_path / "state" / "models").rglob("*.onnx*")
    )


def test_activate_switches_the_running_daemon_without_dropping_requests(hub, tmp_path) -> None:
    state = str(tmp_path / "state")
    env = hub_env(hub, tmp_path)
    assert cli("models", "pull", "phi-4-mini-instruct", "--variant", "cpu-int4", "--activate",
               "--state-dir", state, env=env).returncode == 0  # fmt: skip
    # The second model comes from a folder (an offline gateway's USB stick).
    assert cli("models", "pull", "qwen2.5-0.5b-instruct", "--from", str(TINY / "cpu-fp32"),
               "--state-dir", state, "--trust-unverified").returncode == 0  # fmt: skip
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker").start()
    gateway = start_daemon("--state-dir", state, "--max-context", "16384", "--mqtt-url",
                           broker.url, "--device-id", "gw-models",
                           env={"EDGE_AGENT_MODEL_WATCH_INTERVAL_S": "0.1"})  # fmt: skip
    try:
        assert gateway.status()["model"]["name"] == "phi-4-mini-instruct"
        device = Device(broker)
        assert device.status("gw-models", "ready")["model"] == "phi-4-mini-instruct"
        long = {"model": "phi4-mini", "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 12000, "temperature": 0, "stream": True}  # fmt: skip
        with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=long
        ) as running:  # fmt: skip
            lines = running.iter_lines()
            assert next(lines).startswith("data: ")
            activated = cli("models", "activate", "qwen2.5-0.5b-instruct", "--state-dir", state)
            assert activated.returncode == 0, activated.stderr
            wait_for(lambda: gateway.status()["model"]["name"] == "qwen2.5-0.5b-instruct")
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length"  # finished on the old one
        assert device.status("gw-models", "ready")["model"] == "qwen2.5-0.5b-instruct"
        new = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
        reply = new.chat.completions.create(model="qwen2.5:0.5b", messages=long["messages"],
                                            max_tokens=3)  # fmt: skip
        assert reply.usage.completion_tokens == 3
        with pytest.raises(openai.NotFoundError):
            new.chat.completions.create(model="phi4-mini", messages=long["messages"])
        assert gateway.status()["model"]["variant"] == "cpu-int4"
        removed = cli("models", "remove", "qwen2.5-0.5b-instruct", "--state-dir", state)
        assert removed.returncode == 1 and "active model" in removed.stderr
        assert cli("models", "remove", "phi-4-mini-instruct", "--state-dir", state).returncode == 0
    finally:
        gateway.stop()
        broker.stop()


def board_with_memory(tmp_path: Path, available_kib: int) -> Path:
    root = tmp_path / "board"
    shutil.copytree(REPO / "tests" / "fixtures" / "boards" / "x86-container", root)
    meminfo = root / "proc" / "meminfo"
    lines = [
        f"MemAvailable:   {available_kib} kB" if line.startswith("MemAvailable") else line
        for line in meminfo.read_text().splitlines()
    ]
    meminfo.write_text("\n".join(lines) + "\n")
    return root


def test_a_model_that_does_not_fit_is_refused_or_given_a_shorter_context(tmp_path) -> None:
    # The tiny model: 1.3 MiB of weights + 512 bytes of KV cache per token and slot.
    root = board_with_memory(tmp_path, available_kib=6 * 1024)
    flags = ("--hardware-root", str(root), "--memory-reserve-mb", "0", "--max-context", "4096",
             "--max-batch", "4", "--provider", "cpu", "--prefix-cache-entries", "0")  # fmt: skip
    refused = cli("serve", "--http-port", "0", *flags)
    assert refused.returncode == 1
    assert "needs 9 MiB" in refused.stderr and "only 6 MiB are available" in refused.stderr
    # Each og.Generator kept for prefix reuse holds a KV cache too: counted as a request.
    kept = cli("serve", "--http-port", "0", *flags[:-1], "2")
    assert "needs 13 MiB" in kept.stderr and "4096 tokens x 6 requests" in kept.stderr
    fitted = start_daemon(*flags, "--fit-context")
    try:
        max_length = fitted.status()["model"]["max_length"]
        assert 512 <= max_length < 4096 and max_length % 256 == 0
        assert 1.3 * 2**20 + 512 * 4 * max_length <= 6 * 2**20
    finally:
        fitted.stop()


def test_convert_runs_the_builder_with_the_gateway_defaults(tmp_path) -> None:
    plan = ConvertPlan("Qwen/Qwen2.5-0.5B-Instruct", tmp_path / "qwen")
    command = plan.command()
    assert command[1:3] == ["-m", "onnxruntime_genai.models.builder"]
    assert command[command.index("-p") + 1] == "int4" and command[command.index("-e") + 1] == "cpu"
    assert command[command.index("-m", 3) + 1] == "Qwen/Qwen2.5-0.5B-Instruct"
    options = command[command.index("--extra_options") + 1 :]
    assert options == ["block_size=32", "accuracy_level=4"]
    fast = ConvertPlan(str(TINY), tmp_path / "y", block_size=128).command()
    assert fast[fast.index("--extra_options") + 1] == "block_size=128"
    pruned = ConvertPlan(str(TINY), tmp_path / "x", prune_lm_head=True).command()
    assert "prune_lm_head=true" in pruned and pruned[pruned.index("-i") + 1] == str(TINY)
    # The daemon's venv has no torch (it never needs it): convert says what is missing.
    missing = cli("models", "convert", str(TINY), "--out", str(tmp_path / "out"),
                  "--python", sys.executable)  # fmt: skip
    assert missing.returncode == 1 and "cannot run the model builder" in missing.stderr
