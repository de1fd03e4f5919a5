"""The container and compose files: consistent with the daemon's settings, and the
Mosquitto configuration (passwords and ACL) checked against a real broker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import yaml

from agent.settings import Settings, setting_fields
from tests.conftest import REPO
from tests.mqtt_support import MOSQUITTO, free_port

DOCKER = REPO / "docker"
SETTINGS = {f"EDGE_AGENT_{name.upper()}" for name in setting_fields()}


def compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_run_as_a_user_with_health_and_stop_signal(name: str) -> None:
    text = (DOCKER / name).read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER edge-agent$", final_stage, re.M)
    assert "STOPSIGNAL SIGTERM" in final_stage
    assert re.search(r"HEALTHCHECK .*\n.*127\.0\.0\.1:8080/ready", final_stage)
    assert 'ENTRYPOINT ["edge-agent", "serve"]' in final_stage
    for variable in re.findall(r"(EDGE_AGENT_[A-Z_]+)=", text):
        assert variable in SETTINGS, variable
    # A pinned model would not follow `models activate`; the package brings its own model.
    assert "EDGE_AGENT_MODEL=" not in text
    for source in re.findall(r"^COPY (?:--chown=\S+ )?(\S+) ", text, re.M):
        if not source.startswith("--from"):
            assert (REPO / source).exists(), source


def test_compose_stack_wires_agent_broker_and_webui() -> None:
    stack = compose("compose.yaml")
    agent = stack["services"]["agent"]
    assert set(agent["environment"]) <= SETTINGS
    assert all(port.startswith("127.0.0.1:") for port in agent["ports"])
    assert _seconds(agent["stop_grace_period"]) > float(
        agent["environment"]["EDGE_AGENT_DRAIN_TIMEOUT_S"]
    )
    limits = agent["deploy"]["resources"]["limits"]
    assert limits["memory"] and limits["cpus"]
    assert stack["services"]["open-webui"]["environment"]["OLLAMA_BASE_URL"] == "http://agent:8080"
    broker_url = agent["environment"]["EDGE_AGENT_MQTT_URL"]
    assert broker_url.startswith("mqtt://gw-0001@mosquitto:")
    for service in stack["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), source
    for secret in stack["secrets"].values():
        assert (DOCKER / secret["file"]).exists()


@pytest.mark.parametrize(("name", "kind"), [("compose.ollama.yaml", "ollama"),
                                            ("compose.vllm.yaml", "openai")])  # fmt: skip
def test_fallback_overrides_set_valid_cloud_endpoints(name: str, kind: str) -> None:
    override = compose(name)
    cloud = json.loads(override["services"]["agent"]["environment"]["EDGE_AGENT_CLOUD"])
    endpoints = Settings(cloud=cloud).cloud
    assert [e.kind for e in endpoints] == [kind]
    host = endpoints[0].base_url.split("//")[1].split(":")[0]
    assert host in override["services"]  # the endpoint is the service the override adds


def test_monitoring_override_provisions_the_dashboard() -> None:
    override = compose("compose.monitoring.yaml")
    mounts = [v.split(":")[0] for s in override["services"].values() for v in s["volumes"]]
    for source in (m for m in mounts if m.startswith(".")):
        assert (DOCKER / source).exists(), source
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.compose.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["agent:8080"]


def _seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


@pytest.mark.skipif(shutil.which(MOSQUITTO) is None, reason="needs mosquitto")
def test_mosquitto_acl_keeps_each_gateway_to_its_own_topics(tmp_path: Path) -> None:
    port = free_port()
    config = (DOCKER / "mosquitto" / "mosquitto.conf").read_text()
    config = config.replace("listener 1883", f"listener {port} 127.0.0.1")
    config = config.replace("/mosquitto/config/", f"{DOCKER}/mosquitto/")
    config = config.replace("/mosquitto/data/", f"{tmp_path}/")
    (tmp_path / "mosquitto.conf").write_text(config + "user root\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")],
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        gateway = _client(port, "gw-0001", "change-me")
        assert gateway is not None, "gw-0001 could not log in"
        assert _client(port, "gw-0001", "wrong") is None
        assert _client(port, None, None) is None  # no anonymous access
        fleet = _client(port, "fleet", "change-me")
        seen: list[str] = []
        subscribed = threading.Event()
        fleet.on_message = lambda c, u, m: seen.append(m.topic)
        fleet.on_subscribe = lambda *args: subscribed.set()
        fleet.subscribe("edge-agent/v1/#", qos=1)
        assert subscribed.wait(5)
        gateway.publish("edge-agent/v1/gw-0001/status", "{}", qos=1).wait_for_publish(5)
        gateway.publish("edge-agent/v1/gw-0002/status", "{}", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 5
        while "edge-agent/v1/gw-0001/status" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        gateway.publish("edge-agent/v1/gw-0001/telemetry", "{}", qos=1).wait_for_publish(5)
        while "edge-agent/v1/gw-0001/telemetry" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "edge-agent/v1/gw-0001/status" in seen
        assert "edge-agent/v1/gw-0002/status" not in seen  # not its own: dropped by the ACL
    finally:
        broker.terminate()
        broker.wait(10)


def _client(port: int, user: str | None, password: str | None) -> paho.Client | None:
    """A connected client, or None if the broker refused the login."""
    client = paho.Client(callback_api_version=paho.CallbackAPIVersion.VERSION2)
    if user is not None:
        client.username_pw_set(user, password)
    outcome: list[bool] = []
    client.on_connect = lambda c, u, f, rc, p: outcome.append(not rc.is_failure)
    for _ in range(50):  # the broker may still be starting
        try:
            client.connect("127.0.0.1", port)
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not outcome and time.monotonic() < deadline:
        time.sleep(0.02)
    if outcome and outcome[0]:
        return client
    client.loop_stop()
    return None
