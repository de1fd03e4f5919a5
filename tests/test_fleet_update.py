"""`cmd/update_model` and `cmd/rollback` against a real Mosquitto, real daemons and a local
HTTP artifact server with Range support (a test-owned http.server subclass)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY, Daemon, start_daemon
from tests.mqtt_support import Broker, Device, free_port

# No model named: the one serving, before and after a switch.
ASK = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
BIG = "model.onnx.data"
MIB = 1 << 20


class ArtifactServer(ThreadingHTTPServer):
    """Serves a folder, answers `Range: bytes=N-` with 206, records every Range header it
    got, and can send BIG slowly (a slow link, so a download can be cut in the middle)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ranges: list[tuple[str, str]] = []
        self.slow = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(SimpleHTTPRequestHandler):
    server: ArtifactServer

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, directory=str(args[2].root), **kwargs)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        start = 0
        if wanted is not None:
            self.server.ranges.append((path.name, wanted))
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = memoryview(data)[start:]
        step = 32 * 1024
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset : offset + step])
                if path.name == BIG and self.server.slow.is_set():
                    self.wfile.flush()
                    time.sleep(0.1)  # the slow link itself, not a wait for an event
        except (BrokenPipeError, ConnectionResetError):
            pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[ArtifactServer]:
    """A copy of the bundled int4 folder, plus a manifest listing its files and hashes."""
    root = tmp_path / "artifacts"
    folder = root / "tiny-v2"
    shutil.copytree(TINY / "cpu-int4", folder)
    files = {p.name: sha256(p) for p in sorted(folder.iterdir())}
    (root / "tiny-v2.json").write_text(json.dumps({"files": files}))
    server = ArtifactServer(root)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "broker"
    directory.mkdir()
    instance = Broker(directory).start()
    yield instance
    instance.stop()


@pytest.fixture
def gateways() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


def gateway(broker: Broker, started: list[Daemon], state: Path, *flags: str, device_id="") -> str:
    device_id = device_id or f"gw-{uuid.uuid4().hex[:6]}"
    started.append(
        start_daemon(
            "--mqtt-url", broker.url, "--device-id", device_id, "--state-dir", str(state), *flags
        )
    )
    return device_id


def command(device: Device, device_id: str, name: str, body: dict, correlation=None) -> str:
    topic = f"edge-agent/v1/{device_id}/cmd/{name}"
    return device.request(device_id, body, topic=topic, correlation=correlation)


def update_body(server: ArtifactServer, version: str, **extra) -> dict:
    return {
        "name": "tiny-fleet",
        "version": version,
        "source": {"url": f"{server.url}/tiny-v2"},
        "manifest_url": f"{server.url}/tiny-v2.json",
        **extra,
    }


def status_with(device: Device, device_id: str, **wanted) -> dict:
    """The next retained status with the wanted fields."""
    topic = f"edge-agent/v1/{device_id}/status"
    item = device._take(
        lambda t, p, c: t == topic and all(p.get(k) == v for k, v in wanted.items()), 30
    )
    assert item is not None, f"no status with {wanted}"
    return item[1]


def ask(daemon: Daemon) -> httpx.Response:
    return httpx.post(f"{daemon.url}/v1/chat/completions", json=ASK, timeout=60)


def test_update_switches_the_model_while_requests_are_answered(
    broker, gateways, artifacts, tmp_path
) -> None:
    state = tmp_path / "state"
    device_id = gateway(broker, gateways, state)
    daemon = gateways[0]
    device = Device(broker)
    answered: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            answered.append(ask(daemon).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        body = update_body(artifacts, "v2", wait_s=2)  # traffic never stops: wait 2 s at most
        replies = device.replies(command(device, device_id, "update_model", body))
    finally:
        stop.set()
        worker.join()
    types = [r["type"] for r in replies]
    assert types[0] == "accepted" and types[-1] == "final" and "progress" in types, types
    final = replies[-1]
    assert final["ok"] is True, final
    assert final["result"]["model"] == "tiny-fleet" and final["result"]["version"] == "v2"
    assert final["result"]["previous"]["model"] == "tiny"
    assert answered and set(answered) == {200}, answered
    status = status_with(device, device_id, model="tiny-fleet")
    assert status["state"] == "ready" and status["model_version"] == "v2"
    assert daemon.status()["model"]["name"] == "tiny-fleet"
    assert ask(daemon).status_code == 200
    assert (state / "models" / "active").resolve() == state / "models" / "tiny-fleet" / "v2"
    updating = [e for e in daemon.logs if e.get("event") == "mqtt command"]
    assert [e["outcome"] for e in updating] == ["ok"]


def test_a_repeated_update_id_does_not_download_again(broker, gateways, artifacts, tmp_path):
    device_id = gateway(broker, gateways, tmp_path / "state")
    daemon = gateways[0]
    device = Device(broker)
    body = update_body(artifacts, "v2")
    first = device.replies(command(device, device_id, "update_model", body, "u-1"))[-1]
    assert first["ok"] is True, first
    switches = [e for e in daemon.logs if e.get("event") == "model switch"]
    again = device.replies(command(device, device_id, "update_model", body, "u-1"))
    assert again == [first]
    assert [e for e in daemon.logs if e.get("event") == "model switch"] == switches


def test_a_corrupted_artifact_is_refused_and_the_old_model_serves(
    broker, gateways, artifacts, tmp_path
) -> None:
    state = tmp_path / "state"
    device_id = gateway(broker, gateways, state)
    daemon = gateways[0]
    device = Device(broker)
    folder = artifacts.root / "tiny-v2"
    hashes = {p.name: sha256(p) for p in sorted(folder.iterdir())}
    with (folder / BIG).open("r+b") as file:  # one flipped byte on the server
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    body = {**update_body(artifacts, "v3"), "sha256": hashes}
    del body["manifest_url"]
    final = device.replies(command(device, device_id, "update_model", body))[-1]
    assert final["ok"] is False and final["error"].startswith("checksum:"), final
    assert BIG in final["error"]
    assert final["result"]["step"] == "checksum"
    assert final["result"]["previous"]["model"] == "tiny"  # what was, and still is, serving
    assert daemon.status()["model"]["name"] == "tiny"
    assert ask(daemon).status_code == 200
    assert not (state / "models" / "tiny-fleet").exists()
    assert not (state / "models" / "active").exists()
    assert device.status(device_id, "ready")["model"] == "tiny"


def test_an_unreachable_source_fails_at_download_without_showing_its_secrets(
    broker, gateways, artifacts, tmp_path
) -> None:
    device_id = gateway(broker, gateways, tmp_path / "state")
    device = Device(broker)
    folder = artifacts.root / "tiny-v2"
    hashes = {p.name: sha256(p) for p in sorted(folder.iterdir())}
    closed = free_port()  # nothing listens there
    url = f"http://fleet:s3cret@127.0.0.1:{closed}/tiny-v2?signature=abc123"
    body = {**update_body(artifacts, "v4"), "source": {"url": url}, "sha256": hashes}
    del body["manifest_url"]
    final = device.replies(command(device, device_id, "update_model", body))[-1]
    assert final["ok"] is False and final["error"].startswith("download:"), final
    assert final["result"]["step"] == "download"
    assert "s3cret" not in json.dumps(final) and "abc123" not in json.dumps(final)
    assert ask(gateways[0]).status_code == 200


def test_a_model_too_large_for_memory_is_refused(broker, gateways, artifacts, tmp_path) -> None:
    board = tmp_path / "board"  # a recorded board with 100 MiB available
    shutil.copytree(Path(__file__).parent / "fixtures" / "boards" / "x86-container", board)
    (board / "proc" / "meminfo").write_text(
        "MemTotal: 1048576 kB\nMemFree: 102400 kB\nMemAvailable: 102400 kB\n"
    )
    (board / "sys" / "fs" / "cgroup" / "memory.max").write_text("max\n")
    flags = ("--hardware-root", str(board), "--memory-reserve-mb", "60")
    device_id = gateway(broker, gateways, tmp_path / "state", *flags, "--memory-resume-mb", "70")
    daemon = gateways[0]
    device = Device(broker)
    folder = artifacts.root / "tiny-v2"
    (folder / "padding.bin").write_bytes(b"\0" * (48 * MIB))  # 40 MiB left: it cannot fit
    hashes = {p.name: sha256(p) for p in folder.iterdir()}
    body = {**update_body(artifacts, "big"), "sha256": hashes}
    del body["manifest_url"]
    final = device.replies(command(device, device_id, "update_model", body))[-1]
    assert final["ok"] is False and final["error"].startswith("memory:"), final
    assert final["result"]["step"] == "memory"
    assert daemon.status()["model"]["name"] == "tiny"
    assert ask(daemon).status_code == 200


def test_rollback_returns_to_the_previous_version(broker, gateways, artifacts, tmp_path) -> None:
    state = tmp_path / "state"
    device_id = gateway(broker, gateways, state, "--keep-versions", "2")
    daemon = gateways[0]
    device = Device(broker)
    for version in ("v1", "v2", "v3"):
        final = device.replies(
            command(device, device_id, "update_model", update_body(artifacts, version))
        )[-1]
        assert final["ok"] is True, final
    store = state / "models" / "tiny-fleet"
    # Kept: the newest two, and never the active (v3) or the previous one (v2).
    assert sorted(p.name for p in store.iterdir()) == ["v2", "v3"]
    final = device.replies(command(device, device_id, "rollback", {}))[-1]
    assert final["ok"] is True, final
    assert final["result"]["version"] == "v2" and final["result"]["previous"]["version"] == "v3"
    assert status_with(device, device_id, model_version="v2")["state"] == "ready"
    assert (state / "models" / "active").resolve() == store / "v2"
    assert ask(daemon).status_code == 200
    # v1 is gone from disk: the next step back is the bundled model served before it.
    final = device.replies(command(device, device_id, "rollback", {}))[-1]
    assert final["ok"] is True and final["result"]["model"] == "tiny", final
    assert not (state / "models" / "active").exists()  # a restart serves the bundled one too
    final = device.replies(command(device, device_id, "rollback", {}))[-1]
    assert final["ok"] is False and final["error"].startswith("rollback:"), final
    assert daemon.status()["model"]["name"] == "tiny"
    assert ask(daemon).status_code == 200


def test_an_interrupted_download_resumes_after_a_restart(
    broker, gateways, artifacts, tmp_path
) -> None:
    state = tmp_path / "state"
    device_id = gateway(broker, gateways, state)
    device = Device(broker, persistent=True)
    artifacts.slow.set()
    correlation = command(device, device_id, "update_model", update_body(artifacts, "v9"))
    progress = device.replies(correlation, until="progress")
    assert progress[-1]["type"] == "progress"
    assert device.status(device_id, "updating")["model"] == "tiny"  # retained while it runs
    deadline = time.monotonic() + 30
    partial = state / "models" / ".partial" / "update-tiny-fleet-v9" / f"{BIG}.part"
    while not (partial.is_file() and partial.stat().st_size > 0):
        assert time.monotonic() < deadline, "no partial download"
        device.replies(correlation, until="progress")
    gateways[0].process.kill()  # kill -9 in the middle of the download
    gateways[0].process.wait(10)
    cut = partial.stat().st_size
    assert 0 < cut < (artifacts.root / "tiny-v2" / BIG).stat().st_size
    artifacts.slow.clear()
    gateways.append(
        start_daemon("--mqtt-url", broker.url, "--device-id", device_id, "--state-dir", str(state))
    )
    final = device.replies(correlation, timeout_s=60)[-1]  # the broker delivers it again
    assert final["ok"] is True, final
    resumed = [int(r.removeprefix("bytes=").split("-")[0]) for f, r in artifacts.ranges if f == BIG]
    assert resumed and resumed[-1] >= cut, artifacts.ranges
    assert gateways[-1].status()["model"]["name"] == "tiny-fleet"


def test_a_local_folder_update_that_cannot_load_is_refused_then_one_that_can(
    broker, gateways, tmp_path
) -> None:
    state = tmp_path / "state"
    device_id = gateway(broker, gateways, state)
    daemon = gateways[0]
    device = Device(broker)
    broken = tmp_path / "usb" / "broken"
    shutil.copytree(TINY / "cpu-int4", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")  # hashes match, loading fails
    body = {
        "name": "tiny-usb",
        "version": "1",
        "source": {"path": str(broken)},
        "sha256": {p.name: sha256(p) for p in broken.iterdir()},
    }
    final = device.replies(command(device, device_id, "update_model", body))[-1]
    assert final["ok"] is False and final["error"].startswith("load:"), final
    assert not (state / "models" / "tiny-usb" / "1").exists()
    assert daemon.status()["model"]["name"] == "tiny"
    assert ask(daemon).status_code == 200
    intact = {p.name: sha256(p) for p in (TINY / "cpu-int4").iterdir()}
    body = {**body, "source": {"path": str(TINY / "cpu-int4")}, "sha256": intact}
    final = device.replies(command(device, device_id, "update_model", body))[-1]
    assert final["ok"] is True, final
    assert daemon.status()["model"]["name"] == "tiny-usb"
    verified = subprocess.run(
        [sys.executable, "-m", "agent", "models", "verify", "tiny-usb"],
        env={**os.environ, "EDGE_AGENT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
