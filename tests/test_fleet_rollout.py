"""`edge-agent fleet update|rollback|config set` as a subprocess, against a real Mosquitto,
two real daemons (gw-a, gw-b) and the local Range artifact server of test_fleet_update."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from agent.telemetry.fleet import FleetView
from tests.conftest import REPO, TINY, Daemon
from tests.mqtt_support import Broker, Device
from tests.test_fleet_update import BIG, ArtifactServer, ask, gateway, sha256

POOL = "line-1"


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[ArtifactServer]:
    root = tmp_path / "artifacts"
    folder = root / "tiny-v2"
    shutil.copytree(TINY / "cpu-int4", folder)
    (root / "tiny-v2.json").write_text(
        json.dumps({"files": {p.name: sha256(p) for p in sorted(folder.iterdir())}})
    )
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
def fleet(broker: Broker, tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    """gw-a and gw-b, both serving the bundled tiny model in pool `line-1`."""
    started: list[Daemon] = []
    for name in ("gw-a", "gw-b"):
        gateway(broker, started, tmp_path / name, "--mqtt-pool", POOL, device_id=name)
    yield dict(zip(("gw-a", "gw-b"), started, strict=True))
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.stop()


class Recorder:
    """Every message the broker routes, in the order it routes them to one subscriber."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, dict]] = []
        subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("#", 1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = {}
        self.messages.append((message.topic, payload if isinstance(payload, dict) else {}))

    def first(self, wanted) -> int:
        return next(i for i, (t, p) in enumerate(self.messages) if wanted(t, p))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    instance = Recorder(broker)
    yield instance
    instance.close()


def fleet_cli(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "fleet", *args, "--broker", broker.url],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )


def final_of(topic: str, payload: dict, device_id: str) -> bool:
    return topic.endswith(f"/{device_id}") and payload.get("type") == "final"


def test_update_rolls_out_to_a_canary_first_while_traffic_runs(
    broker, fleet, artifacts, recorder
) -> None:
    answered: list[int] = []
    mqtt_finals: list[dict] = []
    stop = threading.Event()

    def http_traffic(daemon: Daemon) -> None:
        while not stop.is_set():
            answered.append(ask(daemon).status_code)

    def mqtt_traffic(device_id: str) -> None:
        device = Device(broker)
        try:
            while not stop.is_set():
                body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
                mqtt_finals.append(
                    device.replies(device.request(device_id, body), timeout_s=60)[-1]
                )
        finally:
            device.close()

    workers = [threading.Thread(target=http_traffic, args=(d,)) for d in fleet.values()]
    workers += [threading.Thread(target=mqtt_traffic, args=(name,)) for name in fleet]
    for worker in workers:
        worker.start()
    try:
        done = fleet_cli(
            broker,
            "update",
            "tiny-fleet",
            "--version",
            "v2",
            "--source",
            f"{artifacts.url}/tiny-v2",
            "--manifest-url",
            f"{artifacts.url}/tiny-v2.json",
            "--gateways",
            "gw-*",
            "--canary",
            "1",
        )
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert answered and set(answered) == {200}, answered
    assert mqtt_finals and all(f["type"] == "final" for f in mqtt_finals), mqtt_finals
    assert all("error" not in f and f["finish_reason"] != "error" for f in mqtt_finals)
    for daemon in fleet.values():
        assert daemon.status()["model"]["name"] == "tiny-fleet"
        assert ask(daemon).status_code == 200
    # The canary (gw-a, first by id) finished before gw-b was commanded at all.
    canary_final = recorder.first(lambda t, p: final_of(t, p, "gw-a"))
    assert recorder.messages[canary_final][1]["ok"] is True
    second_command = recorder.first(lambda t, p: t == "edge-agent/v1/gw-b/cmd/update_model")
    assert canary_final < second_command
    assert recorder.messages[recorder.first(lambda t, p: final_of(t, p, "gw-b"))][1]["ok"]
    progress = [p for t, p in recorder.messages if p.get("type") == "progress"]
    assert progress, "no progress replies to draw the bars from"
    assert "gw-a" in done.stdout and "gw-b" in done.stdout

    done = fleet_cli(broker, "rollback", "--pool", POOL)
    assert done.returncode == 0, done.stdout + done.stderr
    for daemon in fleet.values():
        assert daemon.status()["model"]["name"] == "tiny"


def test_a_corrupted_artifact_stops_the_rollout_after_the_canary(
    broker, fleet, artifacts, recorder, tmp_path
) -> None:
    folder = artifacts.root / "tiny-v2"
    sums = tmp_path / "SHA256SUMS"  # sha256sum's own format, taken before the damage
    sums.write_text("".join(f"{sha256(p)}  {p.name}\n" for p in sorted(folder.iterdir())))
    with (folder / BIG).open("r+b") as file:
        file.seek(1000)
        byte = file.read(1)
        file.seek(1000)
        file.write(bytes([byte[0] ^ 0xFF]))
    done = fleet_cli(
        broker,
        "update",
        "tiny-fleet",
        "--version",
        "v3",
        "--source",
        f"{artifacts.url}/tiny-v2",
        "--sha256-file",
        str(sums),
        "--gateways",
        "gw-*",
        "--canary",
        "1",
    )
    assert done.returncode != 0, done.stdout + done.stderr
    assert "gw-a" in done.stderr and "checksum" in done.stderr, done.stderr
    assert not [t for t, _ in recorder.messages if t.startswith("edge-agent/v1/gw-b/cmd/")]
    assert fleet["gw-b"].status()["model"]["name"] == "tiny"
    assert fleet["gw-a"].status()["model"]["name"] == "tiny"
    assert ask(fleet["gw-b"]).status_code == 200


def test_config_set_reaches_every_gateway_of_a_pool(broker, fleet) -> None:
    done = fleet_cli(broker, "config", "set", "telemetry_interval_s=5", "--pool", POOL)
    assert done.returncode == 0, done.stdout + done.stderr
    device = Device(broker)  # a fresh subscriber: the retained documents
    try:
        for name in fleet:
            root = f"edge-agent/v1/{name}/config"
            item = device._take(lambda t, p, c, r=root: t == f"{r}/desired", 10)
            assert item is not None and item[1]["telemetry_interval_s"] == 5
            item = device._take(
                lambda t, p, c, r=root: t == f"{r}/reported" and p.get("status") == "applied", 10
            )
            assert item is not None and item[1]["in_force"]["telemetry_interval_s"] == 5
    finally:
        device.close()


def test_an_unknown_gateway_glob_is_an_error(broker, fleet) -> None:
    done = fleet_cli(broker, "rollback", "--gateways", "nowhere-*")
    assert done.returncode != 0 and "no gateway" in done.stderr, done.stderr


def test_watch_shows_the_model_version_and_updating() -> None:
    view = FleetView()
    view.on_status("gw-a", {"state": "updating", "model": "tiny", "model_version": "v2"}, 1.0)
    line = view.table().splitlines()[1]
    assert "updating" in line and "v2" in line
    assert view.rows["gw-a"].public()["model_version"] == "v2"
