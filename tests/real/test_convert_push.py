"""Convert once, push to the fleet: `edge-agent models convert` on SmolLM2-135M's Hugging
Face folder (models/real/hf, the build venv's builder), the result served as it is by
Python's http.server, then `cmd/update_model` over a real Mosquitto to a real daemon, which
checks every file's sha256 from the folder's own list before it serves the new model."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import onnx
import pytest

from agent.models.store import sha256_of
from tests.conftest import REPO, start_daemon
from tests.mqtt_support import Broker, Device

pytestmark = pytest.mark.timeout(900)  # the conversion takes about a minute on 2 cores
HF = REPO / "models" / "real" / "hf"
BUILD_PYTHON = REPO / ".venv-build" / "bin" / "python"
NAME = "smollm2-push"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One conversion for the module, with the compact (shared int4 embedding) layout."""
    if not (HF / "config.json").is_file() or not BUILD_PYTHON.is_file():
        pytest.fail(f"{HF} or {BUILD_PYTHON} is missing: run `make real-model` (make test does)")
    out = tmp_path_factory.mktemp("convert") / NAME
    done = cli("models", "convert", str(HF), "--out", str(out), "--name", NAME, "--compact",
               "--python", str(BUILD_PYTHON), timeout=800)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def served(converted: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A plain static file server (no Range support) over a copy of the converted folder."""
    root = tmp_path / "www"
    shutil.copytree(converted, root / NAME, ignore=shutil.ignore_patterns(".cache"))
    handler = functools.partial(QuietHandler, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root / NAME, f"http://127.0.0.1:{server.server_address[1]}/{NAME}"
    server.shutdown()
    server.server_close()


def served_files(folder: Path) -> dict[str, str]:
    """Every file the server offers (but the hash list itself), with its sha256."""
    return {
        p.relative_to(folder).as_posix(): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "files.json"
    }


def test_compact_shares_one_int4_matrix_as_embedding_and_lm_head(converted) -> None:
    manifest = tomllib.loads((converted / "manifest.toml").read_text())
    assert [v["name"] for v in manifest["variants"]] == ["cpu-int4-compact"]
    assert "shared_embeddings=true" in manifest["source"]["options"]
    graph = onnx.load(str(converted / "cpu-int4-compact" / "model.onnx"), load_external_data=False)
    lookups = [n for n in graph.graph.node if "input_ids" in n.input]
    assert [n.op_type for n in lookups] == ["GatherBlockQuantized"]  # the int4 LM head's weight
    config = json.loads((HF / "config.json").read_text())
    table = [config["vocab_size"], config["hidden_size"]]
    fp32 = onnx.TensorProto.FLOAT
    assert not [t.name for t in graph.graph.initializer if t.dims == table and t.data_type == fp32]


def test_convert_writes_every_files_hash_for_pull_and_the_fleet(converted, tmp_path) -> None:
    manifest = tomllib.loads((converted / "manifest.toml").read_text())
    variant = manifest["variants"][0]
    folder = converted / variant["path"]
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert listed == {
        p.relative_to(converted).as_posix(): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    assert any(p.endswith("model.onnx.data") for p in listed)
    fleet = json.loads((converted / "files.json").read_text())["files"]
    assert {f["path"]: f["sha256"] for f in fleet} == served_files(converted)
    # The variant folder is what `models pull --from` takes: its own hashes, no trust needed.
    state = tmp_path / "state"
    pulled = cli("models", "pull", "smollm2-135m-instruct", "--from", str(folder),
                 "--state-dir", str(state))  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert "verified" in pulled.stdout and "NOT verified" not in pulled.stdout + pulled.stderr
    verified = cli("models", "verify", "smollm2-135m-instruct", "--state-dir", str(state))
    assert verified.returncode == 0, verified.stderr


def test_a_converted_folder_pushed_over_http_serves_on_a_gateway(
    converted, served, broker: Broker, tmp_path
) -> None:
    folder, url = served
    state = tmp_path / "state"
    device_id = f"gw-push-{uuid.uuid4().hex[:6]}"
    daemon = start_daemon(
        "--mqtt-url", broker.url, "--device-id", device_id, "--state-dir", str(state)
    )
    try:
        device = Device(broker)

        def push(version: str) -> dict:
            body = {"name": NAME, "version": version, "source": {"url": url},
                    "manifest_url": f"{url}/files.json"}  # fmt: skip
            topic = f"edge-agent/v1/{device_id}/cmd/update_model"
            return device.replies(device.request(device_id, body, topic=topic), timeout_s=120)[-1]

        # A tampered file on the server (one flipped byte) is refused; the old model serves.
        data = next(folder.rglob("model.onnx.data"))
        original = data.read_bytes()
        data.write_bytes(original[:1000] + bytes([original[1000] ^ 0xFF]) + original[1001:])
        refused = push("bad")
        assert refused["ok"] is False and refused["error"].startswith("checksum:"), refused
        assert "model.onnx.data" in refused["error"]
        assert daemon.status()["model"]["name"] == "tiny"
        assert not (state / "models" / NAME).exists()

        data.write_bytes(original)
        final = push("v1")
        assert final["ok"] is True, final
        assert final["result"]["model"] == NAME and final["result"]["version"] == "v1"
        assert daemon.status()["model"]["name"] == NAME
        asked = httpx.post(
            f"{daemon.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8},
            timeout=60,
        )
        assert asked.status_code == 200 and asked.json()["model"] == NAME, asked.text
        installed = state / "models" / NAME / "v1"
        manifest = tomllib.loads((installed / "manifest.toml").read_text())
        served_hashes = served_files(folder)
        del served_hashes["manifest.toml"]  # checked on arrival, then rewritten for this gateway
        assert {f["path"]: f["sha256"] for f in manifest["files"]} == served_hashes
        verified = cli("models", "verify", NAME, "--state-dir", str(state))
        assert verified.returncode == 0, verified.stderr
    finally:
        daemon.stop()
