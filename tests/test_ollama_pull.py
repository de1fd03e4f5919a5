"""Ollama's /api/pull (the same pull as `edge-agent models pull`, its progress streamed)
and /api/delete of a pulled model, driven by the official `ollama` client against the
real daemon and a local test hub."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, BinaryIO

import ollama
import pytest

from agent.models.catalog import load_catalog
from agent.models.store import ModelStore
from tests.conftest import TINY, Daemon, start_daemon
from tests.hub_support import Hub

PHI4 = load_catalog()["phi-4-mini-instruct"]
FOLDER = PHI4.variant("cpu-int4").folder
SLOW_BYTES_PER_S = 512 * 1024  # the tiny model's 1.4 MB take about 3 s: several progress polls


class Throttled:
    """A socket writer that sends at about SLOW_BYTES_PER_S: a slow link to the hub."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.pause = threading.Event()  # never set: a paced wait

    def write(self, data: bytes) -> None:
        piece = SLOW_BYTES_PER_S // 10
        for start in range(0, len(data), piece):
            self.raw.write(data[start : start + piece])
            self.raw.flush()
            self.pause.wait(0.1)


class SlowHub(Hub):
    """The test hub, serving file bodies over a slow link."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler()

        class Slow(base):  # type: ignore[misc]
            def _send(self, data: bytes, kind: str, body: bool, etag: str | None = None) -> None:
                if etag is None or not body:
                    return super()._send(data, kind, body, etag)
                raw, self.wfile = self.wfile, Throttled(self.wfile)
                try:
                    super()._send(data, kind, body, etag)
                finally:
                    self.wfile = raw

        return Slow


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """The Phi-4-mini ONNX repository's CPU folder, holding the tiny model's files."""
    repo = tmp_path / "repo"
    shutil.copytree(TINY / "cpu-int4", repo / FOLDER)
    served = SlowHub(PHI4.variant("cpu-int4").repo, repo)
    yield served
    served.close()


@pytest.fixture
def gateway(hub: Hub, tmp_path: Path) -> Iterator[Daemon]:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_XET": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    daemon = start_daemon("--state-dir", str(tmp_path / "state"), env=env)
    yield daemon
    daemon.stop()


def installed(tmp_path: Path) -> list[str]:
    return [m.name for m in ModelStore(tmp_path / "state" / "models").installed()]


def test_pull_streams_progress_then_installs_the_verified_model(gateway, hub, tmp_path) -> None:
    client = ollama.Client(host=gateway.url, timeout=120)
    lines = list(client.pull("phi4-mini", stream=True))  # an Ollama tag of the catalog entry
    assert lines[-1].status == "success"
    downloads = [line for line in lines if line.digest]
    total = sum(f["size"] for f in hub.files())
    assert {line.total for line in downloads} == {total}
    completed = [line.completed for line in downloads]
    assert completed == sorted(completed) and completed[-1] == total
    assert any(0 < done < total for done in completed)  # progress while it downloaded
    assert installed(tmp_path) == ["phi-4-mini-instruct"]
    folder = ModelStore(tmp_path / "state" / "models").find("phi-4-mini-instruct").path
    assert folder.name == hub.commit[:12]
    manifest = (folder / "manifest.toml").read_text()
    assert all(f'sha256 = "{served["sha256"]}"' in manifest for served in hub.files())


def test_pull_without_streaming_answers_success_and_unknown_names_404(gateway) -> None:
    client = ollama.Client(host=gateway.url, timeout=120)
    assert client.pull("phi-4-mini-instruct:latest", stream=False).status == "success"
    with pytest.raises(ollama.ResponseError) as unknown:
        list(client.pull("no-such-model:7b", stream=True))
    assert unknown.value.status_code == 404 and "no-such-model" in unknown.value.error
    with pytest.raises(ollama.ResponseError) as refused:
        list(client.pull("smollm2:135m", stream=True))  # in the catalog, no prebuilt ONNX
    assert "edge-agent models convert" in refused.value.error


def test_delete_removes_a_pulled_model_but_not_the_active_one(gateway, tmp_path) -> None:
    client = ollama.Client(host=gateway.url, timeout=120)
    client.create(model="terse", from_="tiny", system="Be terse.")
    client.delete("terse")  # profiles first, as before
    assert "terse" not in [m.model for m in client.list().models]
    assert client.pull("phi4-mini", stream=False).status == "success"
    store = ModelStore(tmp_path / "state" / "models")
    store.activate("phi-4-mini-instruct")
    with pytest.raises(ollama.ResponseError) as active:
        client.delete("phi-4-mini-instruct")
    assert active.value.status_code == 400 and "active model" in active.value.error
    (store.root / "active").unlink()
    client.delete("phi4-mini")  # its Ollama tag names it too
    assert installed(tmp_path) == []
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete("phi-4-mini-instruct")
    assert gone.value.status_code == 404
