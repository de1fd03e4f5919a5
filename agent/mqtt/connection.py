"""paho-mqtt 2.x connection: URL and TLS, persistent session, Last Will, reconnect with
backoff, manual acks. paho's network thread only hands messages to the asyncio loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as paho
import structlog
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from paho.mqtt.client import SocketLike

log = structlog.get_logger(__name__)

JSON = "application/json"
Payload = dict[str, Any]  # a JSON object as published or received
Ack = tuple[int, int]  # an inbound message's (mid, qos), acknowledged later


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str, password_file: Path | None = None) -> BrokerAddress:
        parsed = urlparse(url)
        tls = parsed.scheme == "mqtts"
        password = unquote(parsed.password) if parsed.password else None
        # Only a file with a password counts: the installer creates the mqtt-password
        # credential empty, and systemd always passes it.
        from_file = password_file.read_text().strip() if password_file is not None else ""
        if from_file:
            password = from_file
        return cls(
            host=parsed.hostname or "localhost",
            port=parsed.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parsed.username) if parsed.username else None,
            password=password,
        )


@dataclass(frozen=True)
class Received:
    """One inbound PUBLISH, as the asyncio side sees it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    response_topic: str | None
    correlation: bytes | None
    expiry_s: int | None


class Connection:
    """A stable-client-id session to the broker; thread-safe publish; acks on demand."""

    def __init__(
        self,
        *,
        address: BrokerAddress,
        client_id: str,
        v5: bool,
        keepalive_s: int,
        session_expiry_s: int,
        will: tuple[str, dict[str, Any]],
        on_connect: Callable[[], None],
        on_message: Callable[[Received], None],
        loop: asyncio.AbstractEventLoop,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.v5 = v5
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()  # set once the broker acknowledged our topics
        self.connects = 0
        self._loop = loop
        self._on_connect = on_connect
        self._on_message = on_message
        self._address = address
        self._keepalive_s = keepalive_s
        self._session_expiry_s = session_expiry_s
        self._acks_after: dict[int, list[tuple[int, int]]] = {}  # our mid -> inbound (mid, qos)
        self._published: dict[int, bool] = {}  # recent PUBACKs nobody waited for (bounded)
        self._lock = threading.Lock()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            manual_ack=True,
        )
        if address.username is not None:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set(
                ca_certs=str(ca_file) if ca_file else None,
                certfile=str(cert_file) if cert_file else None,
                keyfile=str(key_file) if key_file else None,
            )
        will_topic, will_payload = will
        client.will_set(
            will_topic, json.dumps(will_payload), qos=1, retain=True, properties=self._props()
        )
        client.reconnect_delay_set(min_delay=1, max_delay=60)
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        client.on_subscribe = self._handle_subscribe
        client.on_socket_open = _no_delay
        self._client = client

    def start(self) -> None:
        properties = None
        if self.v5:
            properties = _new_properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(
            self._address.host,
            self._address.port,
            keepalive=self._keepalive_s,
            clean_start=False if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def subscribe(self, topics: list[str]) -> None:
        self._client.subscribe([(topic, 1) for topic in topics])

    def publish(
        self,
        topic: str,
        payload: dict[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
        ack_after: list[tuple[int, int]] | None = None,
    ) -> paho.MQTTMessageInfo:
        """Publish JSON; with `ack_after`, ack those inbound messages once the broker has
        acknowledged this one (a request is acked only after its final is safe)."""
        info = self._client.publish(
            topic, json.dumps(payload), qos=qos, retain=retain, properties=self._props(correlation)
        )
        if ack_after:
            # While disconnected paho queues a QoS 1 publish and sends it on reconnect
            # (rc NO_CONN, and is_published() would raise): the PUBACK comes back later.
            sent = info.rc == paho.MQTT_ERR_SUCCESS and info.is_published()
            with self._lock:  # the PUBACK may already have come back on paho's thread
                if sent or self._published.pop(info.mid, False):
                    self._ack_all(ack_after)
                else:
                    self._acks_after[info.mid] = ack_after
        return info

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self._client.ack(mid, qos)

    def _props(self, correlation: bytes | None = None) -> Properties | None:
        if not self.v5:
            return None
        properties = _new_properties(PacketTypes.PUBLISH)
        properties.ContentType = JSON
        if correlation is not None:
            properties.CorrelationData = correlation
        return properties

    # ---- paho's network thread --------------------------------------------------------

    def _handle_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning("mqtt connect refused", reason=str(reason_code))
            return
        self.connects += 1
        log.info("mqtt connected", host=self._address.host, session_present=flags.session_present)
        self._loop.call_soon_threadsafe(self._connected)

    def _connected(self) -> None:
        self.connected.set()
        self._on_connect()

    def _handle_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        log.info("mqtt disconnected", reason=str(reason_code))
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _handle_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        props = message.properties if self.v5 else None
        received = Received(
            topic=message.topic,
            payload=bytes(message.payload),  # paho decodes it as bytes: no copy
            mid=message.mid,
            qos=message.qos,
            response_topic=getattr(props, "ResponseTopic", None),
            correlation=getattr(props, "CorrelationData", None),
            expiry_s=getattr(props, "MessageExpiryInterval", None),
        )
        self._loop.call_soon_threadsafe(self._on_message, received)

    def _handle_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self.subscribed.set)

    def _handle_publish(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._lock:
            inbound = self._acks_after.pop(mid, None)
            if inbound is None:
                self._published[mid] = True
                if len(self._published) > 4096:
                    del self._published[next(iter(self._published))]
        if inbound is not None:
            self._ack_all(inbound)

    def _ack_all(self, inbound: list[tuple[int, int]]) -> None:
        for mid, qos in inbound:
            self.ack(mid, qos)


def _new_properties(packet_type: int) -> Properties:
    """MQTT 5 properties for one packet type, typed (paho leaves the constructor bare)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho: __init__ unannotated


def _no_delay(client: Client, userdata: object, sock: SocketLike) -> None:
    """Small replies must not wait for Nagle + delayed ACK (~40 ms per message)."""
    # A TLS socket is a socket.socket too; a websocket wrapper is not (and has no options).
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
