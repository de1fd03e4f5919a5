"""docker/mosquitto/acl: only the fleet operator's account may command a gateway."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, Daemon, start_daemon
from tests.mqtt_support import Broker, Device

ACL = REPO / "docker" / "mosquitto" / "acl"
PASSWORD = "change-me"
GATEWAY = "gw-0001"  # the ACL's gateways log in with their device id


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    passwords = tmp_path / "passwd"
    for user in (GATEWAY, "sensor-hall-3", "fleet-operator"):
        create = ["-c"] if not passwords.exists() else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwords), user, PASSWORD], check=True
        )
    extra = f"password_file {passwords}\nacl_file {ACL}\n"
    instance = Broker(tmp_path, extra_config=extra, anonymous=False).start()
    yield instance
    instance.stop()


@pytest.fixture
def daemon(broker: Broker) -> Iterator[Daemon]:
    url = f"mqtt://{GATEWAY}:{PASSWORD}@127.0.0.1:{broker.port}"
    instance = start_daemon("--mqtt-url", url, "--device-id", GATEWAY)
    yield instance
    instance.stop()


def client(broker: Broker, user: str) -> Device:
    device = Device(broker, username=user, password=PASSWORD)
    device.reply_topic = f"replies/{user}/commands"  # where the ACL lets it read
    device.client.subscribe(device.reply_topic, 1)
    return device


def test_only_the_fleet_operator_may_command(broker: Broker, daemon: Daemon) -> None:
    topic = f"edge-agent/v1/{GATEWAY}/cmd/drain"
    intruder = client(broker, "sensor-hall-3")
    denied = intruder.request(GATEWAY, {}, topic=topic)
    with pytest.raises(AssertionError):
        intruder.replies(denied, timeout_s=2)
    operator = client(broker, "fleet-operator")
    resume = operator.request(GATEWAY, {}, topic=f"edge-agent/v1/{GATEWAY}/cmd/resume")
    assert operator.replies(resume)[-1]["ok"] is True  # commands after the denied one arrive
    commands = [e["command"] for e in daemon.logs if e.get("event") == "mqtt command"]
    assert commands == ["resume"]  # the denied drain never reached the daemon
    assert httpx.get(f"{daemon.url}/ready", timeout=5).status_code == 200
