"""Fleet commands (`cmd/{name}`) and remote configuration (`config/desired` ->
`config/reported`) against a real Mosquitto broker and real daemons."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Daemon, start_daemon
from tests.mqtt_support import Broker, Device

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "broker"  # apart from the daemons' state directories
    directory.mkdir()
    instance = Broker(directory).start()
    yield instance
    instance.stop()


@pytest.fixture
def gateways(broker: Broker) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def gateway(broker: Broker, started: list[Daemon], *flags: str, device_id: str = "") -> str:
    device_id = device_id or f"gw-{uuid.uuid4().hex[:6]}"
    started.append(start_daemon("--mqtt-url", broker.url, "--device-id", device_id, *flags))
    return device_id


def command(device: Device, device_id: str, name: str, body: dict | None = None, **kw) -> str:
    topic = f"edge-agent/v1/{device_id}/cmd/{name}"
    return device.request(device_id, body or {}, topic=topic, **kw)


def message(device: Device, topic: str, wanted=lambda payload: True) -> dict:
    item = device._take(lambda t, p, c: t == topic and wanted(p), 30)
    assert item is not None, f"nothing on {topic}"
    return item[1]


def ready(daemon: Daemon) -> int:
    return httpx.get(f"{daemon.url}/ready", timeout=5).status_code


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_drain_holds_requests_and_resume_serves_them(broker, gateways, v5: bool) -> None:
    device_id = gateway(broker, gateways)
    daemon = gateways[0]
    device = Device(broker, v5=v5)
    drain = command(device, device_id, "drain", {"timeout_s": 5})
    accepted, final = device.replies(drain)
    assert accepted["type"] == "accepted"
    assert final["ok"] is True and final["result"] == {"state": "draining", "idle": True}
    assert final["command"] == "drain"
    device.status(device_id, "draining")
    assert ready(daemon) == 503
    held = device.request(device_id, ASK)  # neither answered nor lost while draining
    with pytest.raises(AssertionError):
        device.replies(held, timeout_s=1)
    resume = command(device, device_id, "resume")
    assert device.replies(resume)[-1]["result"] == {"state": "ready"}
    assert device.replies(held)[-1]["finish_reason"] == "length"
    assert ready(daemon) == 200
    logged = [e for e in daemon.logs if e.get("event") == "mqtt command"]
    assert [(e["command"], e["outcome"]) for e in logged] == [("drain", "ok"), ("resume", "ok")]
    assert logged[0]["id"] is not None


def test_a_repeated_command_id_is_answered_once(broker, gateways) -> None:
    device_id = gateway(broker, gateways)
    daemon = gateways[0]
    device = Device(broker)
    first = device.replies(command(device, device_id, "reload", correlation="same-id"))[-1]
    again = command(device, device_id, "reload", correlation="same-id")
    assert device.replies(again) == [first]  # the cached final, no second accepted or run
    assert first["ok"] is True and first["result"] == {"config": "default"}
    runs = [e for e in daemon.logs if e.get("event") == "mqtt command"]
    assert len(runs) == 1


def test_rebirth_republishes_status_and_config(broker, gateways) -> None:
    device_id = gateway(broker, gateways)
    device = Device(broker, v5=False)
    root = f"edge-agent/v1/{device_id}"
    message(device, f"{root}/config/reported")
    device.status(device_id, "ready")
    final = device.replies(command(device, device_id, "rebirth"))[-1]
    assert final["ok"] is True
    assert device.status(device_id, "ready")["model"] == "tiny"
    assert message(device, f"{root}/config/reported")["status"] == "default"


def test_unknown_command_and_bad_arguments_are_rejected(broker, gateways) -> None:
    device_id = gateway(broker, gateways)
    device = Device(broker)
    rejected = device.replies(command(device, device_id, "selfdestruct"))
    assert [r["type"] for r in rejected] == ["rejected"]
    assert rejected[0]["code"] == "not_found"
    bad = device.replies(command(device, device_id, "drain", {"timeout_s": "soon"}))[-1]
    assert bad["ok"] is False and "timeout_s" in bad["error"]
    assert ready(gateways[0]) == 200  # a refused drain drained nothing


def test_desired_config_is_applied_persisted_and_reported(broker, gateways, tmp_path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "edge-agent.toml"  # the gateway's own file: the fleet may override it
    config.write_text("cpu_enter_percent = 90\n")
    flags = ("--state-dir", str(state), "--telemetry-interval-s", "30", "--config", str(config))
    device_id = gateway(broker, gateways, *flags)
    daemon = gateways[0]
    device = Device(broker)
    root = f"edge-agent/v1/{device_id}"
    reported_topic = f"{root}/config/reported"
    assert message(device, reported_topic)["status"] == "default"
    desired = {
        "version": 1,
        "default_route": "prefer_cloud",
        "cpu_enter_percent": 70,
        "cpu_leave_percent": 60,
        "telemetry_interval_s": 5,  # pinned by the command line: the command line wins
        "default_model": "coding",
    }
    publish(device, f"{root}/config/desired", desired)
    reported = message(device, reported_topic, lambda p: p.get("version") == 1)
    assert reported["status"] == "applied" and "error" not in reported
    assert reported["in_force"]["default_route"] == "prefer_cloud"
    assert reported["in_force"]["cpu_enter_percent"] == 70
    assert reported["in_force"]["telemetry_interval_s"] == 30
    assert reported["overridden"] == {"telemetry_interval_s": "command line"}
    routing = daemon.status()["routing"]
    assert routing["default_route"] == "prefer_cloud"
    assert json.loads((state / "fleet-config.json").read_text()) == desired

    for bad, reason in [
        ({"version": 2, "max_queue": 3}, "not settings a fleet may change: max_queue"),
        ({"version": 3, "cpu_enter_percent": 500}, "cpu_enter_percent"),
        ({"version": 4, "default_model": "nope"}, "'nope' does not exist"),
        ({"version": 5, "cloud": ["ftp://x"]}, "cloud"),
    ]:
        publish(device, f"{root}/config/desired", bad)
        refused = message(device, reported_topic, lambda p, v=bad["version"]: p.get("version") == v)
        assert refused["status"] == "rejected" and reason in refused["error"], refused
        assert refused["in_force"]["default_route"] == "prefer_cloud"  # nothing of it applied
        assert refused["in_force"]["cpu_enter_percent"] == 70
    assert json.loads((state / "fleet-config.json").read_text()) == desired

    daemon.stop()  # the persisted document is in force after a restart, broker or not
    gateways.clear()
    restarted = start_daemon(*flags, "--device-id", device_id)
    gateways.append(restarted)
    assert restarted.status()["routing"]["default_route"] == "prefer_cloud"


def publish(device: Device, topic: str, document: dict) -> None:
    device.client.publish(topic, json.dumps(document), qos=1, retain=True).wait_for_publish(10)
