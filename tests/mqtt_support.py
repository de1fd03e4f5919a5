"""A real Mosquitto broker on a free loopback port, and a paho-mqtt test client."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ANSWERS = ("final", "rejected")  # the one reply that ends a request
SENTINEL = {"messages": "sentinel"}  # rejected at once by the gateway, without the engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Broker:
    """mosquitto with persistence, so sessions and queued messages survive a restart."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""  # lines for the listener: TLS files, password_file
    anonymous: bool = True
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "max_queued_messages 10000\n"
            "set_tcp_nodelay true\n"
            # As root mosquitto would switch to its own user, who cannot read pytest's tmp dirs.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"{self.extra_config}"
        )
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # mosquitto saves its persistence file on SIGTERM
            self.process.wait(10)
            self.process = None


class Device:
    """A device on the floor: paho-mqtt, MQTT 5 (or 3.1.1), collecting replies."""

    def __init__(
        self,
        broker: Broker,
        v5: bool = True,
        persistent: bool = False,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.v5 = v5
        self.inbox: queue.Queue[tuple[str, dict, bytes | None]] = queue.Queue()
        self.kept: list[tuple[str, dict, bytes | None]] = []
        self.reply_topic = f"devices/{uuid.uuid4().hex[:8]}/replies"
        self.client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=f"device-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not persistent,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:
            self.client.tls_set(ca_certs=str(ca_file))
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        subscribed = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(self.reply_topic, 1), ("edge-agent/#", 1)]
        )
        self.client.on_subscribe = lambda *args: subscribed.put(True)
        self.client.on_message = self._on_message
        properties = None
        if v5 and persistent:  # the broker keeps our subscription and replies across restarts
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 600
        self.client.connect(
            "127.0.0.1", broker.port, clean_start=not persistent if v5 else 3, properties=properties
        )
        self.client.loop_start()
        subscribed.get(timeout=10)

    def _on_message(self, client, userdata, message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None) if self.v5 else None
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except (json.JSONDecodeError, UnicodeDecodeError):  # requests it overhears may be junk
            payload = {"raw": message.payload.decode(errors="replace")}
        self.inbox.put((message.topic, payload, correlation))

    def request(
        self,
        device_id: str,
        body: dict | bytes,
        correlation: str | None = None,
        expiry_s: int | None = None,
        topic: str | None = None,
    ) -> str:
        """Publish a request; returns its correlation id."""
        correlation = correlation or uuid.uuid4().hex
        topic = topic or f"edge-agent/v1/{device_id}/infer/req"
        properties = None
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = correlation.encode()
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
            payload = body if isinstance(body, bytes) else json.dumps(body)
        else:
            payload = json.dumps({**body, "id": correlation, "reply_to": self.reply_topic})
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)
        return correlation

    def cancel(self, device_id: str, correlation: str) -> None:
        """A cancel names the request by its correlation under this device's reply topic."""
        properties = None
        payload = b""
        if self.v5:
            properties = Properties(PacketTypes.PUBLISH)
            properties.ResponseTopic = self.reply_topic
            properties.CorrelationData = correlation.encode()
        else:
            payload = json.dumps({"id": correlation, "reply_to": self.reply_topic}).encode()
        topic = f"edge-agent/v1/{device_id}/infer/cancel"
        self.client.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)

    def _take(self, wanted, timeout_s: float) -> tuple[str, dict, bytes | None] | None:
        """The first message (kept aside earlier, or new) that `wanted` accepts."""
        for item in self.kept:
            if wanted(*item):
                self.kept.remove(item)
                return item
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self.inbox.get(timeout=remaining)
            except queue.Empty:
                break
            if wanted(*item):
                return item
            self.kept.append(item)
        return None

    def _mine(self, correlation: str):
        def mine(topic: str, payload: dict, corr: bytes | None) -> bool:
            key = corr.decode() if corr is not None else payload.get("id")
            return topic == self.reply_topic and key == correlation

        return mine

    def replies(self, correlation: str, until: str = "final", timeout_s: float = 30) -> list[dict]:
        """Replies for one correlation id, up to the first of type `until` (or rejected)."""
        mine = self._mine(correlation)
        collected: list[dict] = []
        while True:
            item = self._take(mine, timeout_s)
            if item is None:
                raise AssertionError(f"no {until} for {correlation}: {collected}")
            collected.append(item[1])
            if item[1].get("type") in (until, "rejected"):
                return collected

    def flush(self, device_id: str, timeout_s: float = 30) -> list[tuple[str, dict, bytes | None]]:
        """The grace period after a final, as an event rather than a sleep: every reply not
        read yet that the gateway published before it answered a sentinel request sent now.
        It publishes both on this reply topic over one connection and the broker keeps one
        publisher's order, so a duplicate published before that answer is in the list."""
        self.replies(self.request(device_id, SENTINEL), timeout_s=timeout_s)
        late = [item for item in self.kept if item[0] == self.reply_topic]
        for item in late:
            self.kept.remove(item)
        return late

    def settled_replies(
        self, device_id: str, correlation: str, timeout_s: float = 30
    ) -> list[dict]:
        """Every reply for `correlation`: those up to its final (or rejected), then those that
        arrive within the grace period (`flush`). `exactly_once` judges them."""
        replies = self.replies(correlation, timeout_s=timeout_s)
        mine = self._mine(correlation)
        return replies + [item[1] for item in self.flush(device_id, timeout_s) if mine(*item)]

    def status(self, device_id: str, state: str, timeout_s: float = 30) -> dict:
        """The next status message with the given state."""
        topic = f"edge-agent/v1/{device_id}/status"
        item = self._take(lambda t, p, c: t == topic and p.get("state") == state, timeout_s)
        if item is None:
            raise AssertionError(f"no status {state!r} on {topic}")
        return item[1]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def exactly_once(replies: list[dict]) -> None:
    """One request, one answer: exactly one final or rejected, and nothing after it. A
    duplicate final, or a final after `rejected`, fails."""
    types = [reply.get("type") for reply in replies]
    answers = [kind for kind in types if kind in ANSWERS]
    assert len(answers) == 1 and types[-1] in ANSWERS, f"not exactly one answer: {types}"
