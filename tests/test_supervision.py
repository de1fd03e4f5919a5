"""Running under systemd: readiness, status lines, watchdog pings that stop when the engine
wedges, and a drain on SIGTERM that loses nothing. The test plays systemd's part on a
real notify socket (NOTIFY_SOCKET), as systemd does."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, start_daemon, wait_for
from tests.mqtt_support import Broker, Device

LONG = {"model": "tiny", "messages": [{"role": "user", "content": "Hello, gateway!"}],
        "max_tokens": 16000, "temperature": 0}  # fmt: skip


class NotifySocket:
    """systemd's side of sd_notify: a datagram socket that collects what it is told."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            for line in data.decode().splitlines():
                self.lines.put(line)

    def wait_for(self, prefix: str, timeout_s: float = 30) -> str:
        """The next line starting with `prefix` within `timeout_s` (queue.Empty if none);
        everything read is kept in `seen`."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    # AF_UNIX paths are short: keep the socket out of pytest's long tmp_path.
    path = Path(f"/tmp/edge-agent-notify-{os.getpid()}-{threading.get_ident()}.sock")
    path.unlink(missing_ok=True)
    sink = NotifySocket(path)
    yield sink
    sink.close()
    path.unlink(missing_ok=True)


def test_ready_watchdog_and_a_drain_that_loses_nothing(tmp_path: Path, notify) -> None:
    broker = Broker(tmp_path).start()
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    flags = ("--mqtt-url", broker.url, "--device-id", "gw-drain", "--max-context", "16384",
             "--drain-timeout-s", "60")  # fmt: skip
    gateway = start_daemon(*flags, env=env)
    restarted = None
    try:
        notify.wait_for("READY=1")
        assert any(line.startswith("STATUS=loading model tiny") for line in notify.seen)
        device = Device(broker, persistent=True)
        assert device.status("gw-drain", "ready")["model"] == "tiny"
        for _ in range(3):  # pings every WATCHDOG_USEC / 2, with a fresh status
            notify.wait_for("WATCHDOG=1", timeout_s=5)
        assert notify.wait_for("STATUS=").startswith("STATUS=serving tiny on cpu")

        with httpx.Client(timeout=120) as client, client.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json={**LONG, "stream": True}
        ) as streaming:  # fmt: skip
            lines = streaming.iter_lines()
            assert next(lines).startswith("data: ")  # the long reply is running
            gateway.process.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING=1")
            refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=LONG, timeout=10)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "server_draining"
            assert device.status("gw-drain", "draining")
            # Arrives during the drain: left on the broker, not lost.
            waiting = device.request("gw-drain", {**LONG, "max_tokens": 3})
            events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length"  # ran to the end
        assert gateway.process.wait(timeout=60) == 0
        assert device.status("gw-drain", "offline")

        restarted = start_daemon(*flags)  # the same session: the broker redelivers
        final = device.replies(waiting)[-1]
        assert final["type"] == "final" and final["usage"]["completion_tokens"] == 3
    finally:
        for daemon in (gateway, restarted):
            if daemon is not None and daemon.process.poll() is None:
                daemon.stop()
        broker.stop()


def test_ready_waits_for_the_mqtt_broker(tmp_path: Path, notify) -> None:
    broker = Broker(tmp_path)  # configured, not started yet
    gateway = start_daemon("--mqtt-url", broker.url, "--device-id", "gw-late",
                           env={"NOTIFY_SOCKET": str(notify.path)})  # fmt: skip
    try:
        assert httpx.get(f"{gateway.url}/health").status_code == 200  # HTTP serves already
        notify.wait_for("STATUS=waiting for the MQTT broker")
        assert not any(line == "READY=1" for line in notify.seen)
        broker.start()
        notify.wait_for("READY=1", timeout_s=30)
    finally:
        gateway.stop()
        broker.stop()


STALL = "Hang the engine here."  # EDGE_AGENT_TEST_ENGINE_STALL: the owner thread blocks


def test_a_stalled_engine_stops_the_pings_and_fails_ready(notify) -> None:
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000",
           "EDGE_AGENT_TEST_ENGINE_STALL": STALL}  # fmt: skip
    gateway = start_daemon("--engine-stall-s", "1", env=env)
    try:
        notify.wait_for("READY=1")
        for _ in range(3):  # pings every 0.1 s while the engine is idle or stepping
            notify.wait_for("WATCHDOG=1", timeout_s=5)
        assert httpx.get(f"{gateway.url}/ready").status_code == 200
        stalled = {"model": "tiny", "messages": [{"role": "user", "content": STALL}],
                   "max_tokens": 8}  # fmt: skip

        def ask() -> None:  # never answered: the real owner thread blocks inside its step
            with contextlib.suppress(httpx.HTTPError):  # cut when the test kills the daemon
                httpx.post(f"{gateway.url}/v1/chat/completions", json=stalled, timeout=60)

        threading.Thread(target=ask, daemon=True).start()
        notify.wait_for("STATUS=engine stalled", timeout_s=15)
        # The pings stop. Nothing can announce "no ping": wait out ten ping intervals (1 s,
        # a bound on an event that must not happen) and see none arrive.
        with pytest.raises(queue.Empty):
            notify.wait_for("WATCHDOG=1", timeout_s=1.0)

        def stall_reported() -> bool:
            answer = httpx.get(f"{gateway.url}/ready", timeout=5)
            return answer.status_code == 503 and answer.json()["status"] == "stalled"

        wait_for(stall_reported, timeout_s=10)
        reason = httpx.get(f"{gateway.url}/ready", timeout=5).json()["reason"]
        assert "no engine step" in reason
        health = httpx.get(f"{gateway.url}/health", timeout=5)  # a liveness probe restarts it
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    finally:
        gateway.process.kill()  # as systemd does after WatchdogSec: the engine never returns
        gateway.process.wait(10)


# ---- the unit and the installer -------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (REPO / "systemd" / "edge-agent.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_has_readiness_watchdog_drain_and_sandbox() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert int(unit["TimeoutStopSec"][0]) > 30  # the default drain_timeout_s
    env = (REPO / "systemd" / "edge-agent.env.example").read_text()
    drain = next(line for line in env.splitlines() if line.startswith("EDGE_AGENT_DRAIN"))
    assert int(unit["TimeoutStopSec"][0]) > float(drain.split("=")[1])
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "StateDirectory": "edge-agent",
                       "CacheDirectory": "edge-agent",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6"}.items():  # fmt: skip
        assert unit[key] == [value], key
    assert any(v.startswith("mqtt-password:") for v in unit["LoadCredential"])
    assert int(unit["WatchdogSec"][0]) > 0 and "StartLimitBurst" in unit
    # Every EDGE_AGENT_* name the unit and the env file set is a real setting.
    from agent.settings import setting_fields

    names = {line.split("=")[0] for line in env.splitlines() if line.startswith("EDGE_AGENT_")}
    names |= {v.split("=")[0] for v in unit["Environment"] if v.startswith("EDGE_AGENT_")}
    fields = {f"EDGE_AGENT_{name.upper()}" for name in setting_fields()}
    assert names <= fields, names - fields


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # The installed path does not exist here: point ExecStart at this checkout's venv.
    unit = (REPO / "systemd" / "edge-agent.service").read_text()
    executable = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "edge-agent"
    copy = tmp_path / "edge-agent.service"
    copy.write_text(unit.replace("/opt/edge-agent/.venv/bin/edge-agent", str(executable)))
    verified = subprocess.run(["systemd-analyze", "verify", str(copy)],
                              capture_output=True, text=True)  # fmt: skip
    problems = [line for line in verified.stderr.splitlines() if "edge-agent.service" in line]
    assert verified.returncode == 0 and not problems, verified.stderr


def test_install_script_is_idempotent_and_uninstalls(tmp_path: Path) -> None:
    prefix, etc, units = tmp_path / "opt", tmp_path / "etc", tmp_path / "units"
    env = {**os.environ, "ETC_DIR": str(etc), "SYSTEMD_DIR": str(units), "SYSTEMCTL": "true",
           # quick: edge-agent itself, its dependencies are pip's business
           "PIP_OPTIONS": "--no-deps"}  # fmt: skip
    script = [str(REPO / "scripts" / "install-gateway.sh"), "--no-start", "--prefix", str(prefix)]
    subprocess.run(script, env=env, check=True, capture_output=True, timeout=300)
    unit = (units / "edge-agent.service").read_text()
    assert f"ExecStart={prefix}/.venv/bin/edge-agent serve" in unit
    assert f"EnvironmentFile=-{etc}/edge-agent.env" in unit
    assert (prefix / ".venv" / "bin" / "edge-agent").is_file()
    assert stat.S_IMODE((etc / "credentials").stat().st_mode) == 0o700
    (etc / "edge-agent.env").write_text("EDGE_AGENT_DEVICE_ID=gw-kept\n")
    subprocess.run(script, env=env, check=True, capture_output=True, timeout=300)  # again
    assert (etc / "edge-agent.env").read_text() == "EDGE_AGENT_DEVICE_ID=gw-kept\n"
    removed = subprocess.run([*script, "--uninstall"], env=env, check=True,
                             capture_output=True, text=True)  # fmt: skip
    assert not prefix.exists() and not (units / "edge-agent.service").exists()
    assert (etc / "edge-agent.env").exists() and "settings kept" in removed.stdout


def test_sigterm_while_idle_exits_zero_quickly(tmp_path: Path) -> None:
    gateway = start_daemon()
    wait_for(lambda: httpx.get(f"{gateway.url}/ready").status_code == 200)
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=15) == 0
    assert any(e.get("event") == "stopped" and e["drained"] for e in gateway.logs)
