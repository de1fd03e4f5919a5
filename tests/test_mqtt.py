"""The MQTT interface against a real Mosquitto broker, with paho-mqtt as the device."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, start_daemon, wait_for
from tests.mqtt_support import Broker, Device

ASK = {"model": "tiny", "messages": [{"role": "user", "content": "Hello, gateway!"}]}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    instance = Broker(tmp_path).start()
    yield instance
    instance.stop()


def mqtt_daemon(broker: Broker, *flags: str, device_id: str | None = None) -> tuple[Daemon, str]:
    device_id = device_id or f"gw-{uuid.uuid4().hex[:6]}"
    daemon = start_daemon("--mqtt-url", broker.url, "--device-id", device_id, *flags)
    return daemon, device_id


@pytest.fixture
def gateway(broker: Broker) -> Iterator[tuple[Daemon, str]]:
    daemon, device_id = mqtt_daemon(broker, "--max-context", "16384")
    yield daemon, device_id
    daemon.stop()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_round_trip(broker: Broker, gateway, v5: bool) -> None:
    daemon, device_id = gateway
    device = Device(broker, v5=v5)
    correlation = device.request(device_id, {**ASK, "max_tokens": 8, "temperature": 0})
    accepted, final = device.replies(correlation)
    assert accepted["type"] == "accepted"
    assert final["type"] == "final" and final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 8
    assert (final["backend"], final["provider"]) == ("local", "cpu")
    http = daemon_chat(daemon, max_tokens=8)
    assert final["text"] == http
    if not v5:
        assert final["id"] == correlation


def daemon_chat(daemon: Daemon, **extra) -> str:
    import httpx

    body = {**ASK, "temperature": 0, **extra}
    reply = httpx.post(f"{daemon.url}/v1/chat/completions", json=body, timeout=30).json()
    return reply["choices"][0]["message"]["content"]


def test_streaming_chunks_are_ordered_and_add_up(broker: Broker, gateway) -> None:
    _, device_id = gateway
    device = Device(broker)
    body = {**ASK, "max_tokens": 200, "temperature": 0, "stream": True}
    correlation = device.request(device_id, body)
    replies = device.replies(correlation)
    chunks = [r for r in replies if r["type"] == "chunk"]
    assert replies[0]["type"] == "accepted" and replies[-1]["type"] == "final"
    assert [c["seq"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert 1 < len(chunks) < 200  # batched, not one message per token
    assert "".join(c["delta"] for c in chunks) == replies[-1]["text"]


def test_cancel_running_and_queued(broker: Broker) -> None:
    daemon, device_id = mqtt_daemon(broker, "--max-context", "16384", "--max-batch", "1")
    try:
        device = Device(broker)
        long = {**ASK, "max_tokens": 16000, "stream": True}
        running = device.request(device_id, long)
        assert device.replies(running, until="chunk")[-1]["type"] == "chunk"
        queued = device.request(device_id, long)
        assert device.replies(queued, until="accepted")[-1]["type"] == "accepted"
        device.cancel(device_id, queued)
        final = device.replies(queued)[-1]
        assert final["finish_reason"] == "cancelled"
        assert final["usage"]["completion_tokens"] == 0  # it never ran
        device.cancel(device_id, running)
        final = device.replies(running)[-1]
        assert final["finish_reason"] == "cancelled"
        assert 0 < final["usage"]["completion_tokens"] < 16000
    finally:
        daemon.stop()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_devices_reusing_an_id_get_their_own_answers(broker: Broker, gateway, v5: bool) -> None:
    """Two devices both send id "1": each gets its own answer on its own topic."""
    _, device_id = gateway
    first, second = Device(broker, v5=v5), Device(broker, v5=v5)
    assert (
        first.replies(first.request(device_id, {**ASK, "max_tokens": 4}, "1"))[-1]["type"]
        == "final"
    )
    replies = second.replies(second.request(device_id, {**ASK, "max_tokens": 3}, "1"))
    assert [r["type"] for r in replies] == ["accepted", "final"]
    assert replies[-1]["usage"]["completion_tokens"] == 3  # its own run, not the cached final
    # The first device hears nothing more about "1": a later reply of its own comes first.
    first.replies(first.request(device_id, {**ASK, "max_tokens": 1}, "2"))
    heard = [(t, m, c) for t, m, c in first.kept if t == first.reply_topic]
    assert [m for _, m, c in heard if "1" in (m.get("id"), c and c.decode())] == []


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_a_cancel_reaches_only_its_own_devices_request(broker: Broker, gateway, v5: bool) -> None:
    _, device_id = gateway
    first, second = Device(broker, v5=v5), Device(broker, v5=v5)
    long = first.request(device_id, {**ASK, "max_tokens": 8000, "stream": True}, "7")
    first.replies(long, until="chunk")
    second.cancel(device_id, "7")  # the same id under another reply topic
    final = first.replies(long)[-1]
    assert (final["finish_reason"], final["usage"]["completion_tokens"]) == ("length", 8000)


def test_expired_request_is_dropped_with_a_final(broker: Broker) -> None:
    daemon, device_id = mqtt_daemon(broker, "--max-context", "16384", "--max-batch", "1")
    try:
        device = Device(broker)
        blocker = device.request(device_id, {**ASK, "max_tokens": 16000, "stream": True})
        device.replies(blocker, until="chunk")
        expiring = device.request(device_id, {**ASK, "max_tokens": 4}, expiry_s=1)
        final = device.replies(expiring)[-1]
        assert final["finish_reason"] == "expired"
        assert final["usage"]["completion_tokens"] == 0
        device.cancel(device_id, blocker)
        device.replies(blocker)
    finally:
        daemon.stop()


MALFORMED: list[bytes | dict] = [
    b"not json",
    b"{",
    b"[]",
    b"42",
    b'"a string"',
    b"\xff\xfe",
    {},
    {"model": "tiny"},
    {"messages": []},
    {"model": "tiny", "messages": "hello"},
    {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]},
    {"model": "tiny", "messages": [{"role": "user"}], "max_tokens": 0},
    {**ASK, "max_tokens": -5},
    {**ASK, "temperature": "hot"},
    {**ASK, "temperature": 9},
    {**ASK, "top_p": 0},
    {**ASK, "n": 3},
    {**ASK, "model": "no-such-model"},
    {**ASK, "max_tokens": 10**9},
    {"model": "tiny", "messages": [{"role": "user", "content": "x " * 20000}]},
]


def test_malformed_payloads_are_rejected_and_service_goes_on(broker: Broker, gateway) -> None:
    _, device_id = gateway
    device = Device(broker)
    codes = []
    for body in MALFORMED:
        correlation = device.request(device_id, body)
        reply = device.replies(correlation)[-1]
        assert reply["type"] == "rejected", body
        assert reply["message"]
        codes.append(reply["code"])
    assert {"invalid_json", "invalid_request", "model_not_found", "context_length_exceeded"} <= set(
        codes
    )
    correlation = device.request(device_id, {**ASK, "max_tokens": 2})
    assert device.replies(correlation)[-1]["finish_reason"] == "length"


def test_status_ready_offline_and_last_will(broker: Broker) -> None:
    device = Device(broker)
    daemon, device_id = mqtt_daemon(broker)
    ready = device.status(device_id, "ready")
    assert ready["model"] == "tiny" and ready["provider"] == "cpu" and ready["session"] == 1
    assert daemon.stop() == 0
    assert device.status(device_id, "offline")["session"] == 1
    daemon, _ = mqtt_daemon(broker, device_id=device_id)
    assert device.status(device_id, "ready")["session"] == 1  # a new process
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    assert device.status(device_id, "lost")["state"] == "lost"


def test_duplicate_correlation_is_answered_once(broker: Broker, gateway) -> None:
    _, device_id = gateway
    device = Device(broker)
    correlation = device.request(device_id, {**ASK, "max_tokens": 4, "temperature": 0})
    first = device.replies(correlation)[-1]
    device.request(device_id, {**ASK, "max_tokens": 4}, correlation=correlation)
    again = device.replies(correlation)[-1]
    assert again == first  # the cached final, not a second run


def test_a_final_given_before_a_crash_is_given_again_not_rerun(
    broker: Broker, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    device = Device(broker)
    body = {**ASK, "max_tokens": 6, "temperature": 1.0}  # a second run would differ
    daemon, device_id = mqtt_daemon(broker, "--state-dir", state)
    correlation = device.request(device_id, body)
    first = device.replies(correlation)[-1]
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    restarted, _ = mqtt_daemon(broker, "--state-dir", state, device_id=device_id)
    try:
        # What the broker does when the acknowledgement died with the process.
        device.request(device_id, body, correlation=correlation)
        assert device.replies(correlation)[-1] == first
        assert sum(restarted.status()["finished"].values()) == 0  # nothing ran again
    finally:
        restarted.stop()


def test_broker_restart_mid_stream_loses_nothing(broker: Broker, gateway) -> None:
    _, device_id = gateway
    device = Device(broker, persistent=True)
    body = {**ASK, "max_tokens": 12000, "stream": True, "temperature": 0}
    correlation = device.request(device_id, body)
    device.replies(correlation, until="chunk")
    broker.stop()
    broker.start()  # same port, same persistence file
    replies = device.replies(correlation, timeout_s=60)
    final = replies[-1]
    assert final["type"] == "final" and final["finish_reason"] == "length"
    assert final["usage"]["completion_tokens"] == 12000
    after = device.request(device_id, {**ASK, "max_tokens": 2})
    assert device.replies(after)[-1]["type"] == "final"


def test_daemon_killed_with_requests_in_flight_answers_after_restart(broker: Broker) -> None:
    device = Device(broker, persistent=True)
    daemon, device_id = mqtt_daemon(broker, "--max-context", "16384")
    running = device.request(device_id, {**ASK, "max_tokens": 16000, "stream": True})
    device.replies(running, until="chunk")
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    waiting = device.request(device_id, {**ASK, "max_tokens": 3})  # published while it is down
    daemon, _ = mqtt_daemon(broker, "--max-context", "16384", device_id=device_id)
    try:
        finals: dict[str, list[dict]] = {}
        for correlation in (running, waiting):
            replies = device.replies(correlation, timeout_s=90)
            finals.setdefault(correlation, []).append(replies[-1])
        assert finals[running][-1]["finish_reason"] == "length"
        assert finals[running][-1]["usage"]["completion_tokens"] == 16000
        assert finals[waiting][-1]["usage"]["completion_tokens"] == 3
    finally:
        daemon.stop()


def test_two_gateways_share_a_pool(broker: Broker) -> None:
    first, _ = mqtt_daemon(broker, "--mqtt-pool", "line-3")
    second, _ = mqtt_daemon(broker, "--mqtt-pool", "line-3")
    try:
        device = Device(broker)
        topic = "edge-agent/v1/pool/line-3/infer/req"
        sent = [device.request("", {**ASK, "max_tokens": 64}, topic=topic) for _ in range(20)]
        gateways = [device.replies(c)[-1]["gateway"] for c in sent]
        assert len(gateways) == 20
        assert len(set(gateways)) == 2  # both took a share
    finally:
        first.stop()
        second.stop()


def test_username_and_password(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    passwords.write_text("")
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), "gateway", "s3cret"], check=True, timeout=30
    )
    secured = Broker(tmp_path, extra_config=f"password_file {passwords}\n", anonymous=False)
    secured.start()
    try:
        secret_file = tmp_path / "mqtt-password"
        secret_file.write_text("s3cret\n")
        url = f"mqtt://gateway@127.0.0.1:{secured.port}"
        daemon = start_daemon("--mqtt-url", url, "--mqtt-password-file", str(secret_file),
                              "--device-id", "gw-auth")  # fmt: skip
        try:
            device = Device(secured, username="gateway", password="s3cret")
            correlation = device.request("gw-auth", {**ASK, "max_tokens": 2})
            assert device.replies(correlation)[-1]["type"] == "final"
            assert "s3cret" not in json.dumps(daemon.logs)
        finally:
            daemon.stop()
        wrong = start_daemon("--mqtt-url", f"mqtt://gateway:nope@127.0.0.1:{secured.port}")
        try:
            wait_for(lambda: any(e["event"] == "mqtt connect refused" for e in wrong.logs))
            assert wrong.status()["mqtt"]["connected"] is False
        finally:
            wrong.stop()
    finally:
        secured.stop()


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for command in (
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=edge-agent test CA"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):  # fmt: skip
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return ca, cert, key


def test_tls_listener(tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    tls = Broker(tmp_path, extra_config=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    tls.start()
    try:
        daemon = start_daemon("--mqtt-url", f"mqtts://127.0.0.1:{tls.port}",
                              "--mqtt-ca-file", str(ca), "--device-id", "gw-tls")  # fmt: skip
        try:
            device = Device(tls, ca_file=ca)
            correlation = device.request("gw-tls", {**ASK, "max_tokens": 2})
            assert device.replies(correlation)[-1]["type"] == "final"
        finally:
            daemon.stop()
    finally:
        tls.stop()
