"""The MQTT bridge: requests in, accepted/rejected/chunk/final out, cancel, retained status.

At-least-once without loss: a request is acknowledged to the broker only once its final
reply has been acknowledged by the broker (persistent session, manual acks), so a broker
or daemon restart redelivers whatever was not answered. Redeliveries are recognised by
reply topic and correlation id: one in flight is answered by the running request, one
already answered gets the cached final again. Finals are spooled to the state directory
before they are published, so this holds across a crash too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog
from paho.mqtt.client import MQTTMessageInfo

from agent import __version__
from agent.engine.reply import ReplyReader
from agent.engine.types import EngineError, ErrorCode
from agent.mqtt.answered import AnsweredFinals
from agent.mqtt.commands import CommandChannel
from agent.mqtt.connection import Ack, BrokerAddress, Connection, Payload, Received
from agent.mqtt.topics import Topics
from agent.protocol.fields import WireModel
from agent.protocol.mqtt import (
    Accepted,
    ChunkReply,
    FinalReply,
    Rejected,
    ReplyRoute,
    cancel_key,
    parse_request,
)
from agent.protocol.openai import ChatCompletionRequest
from agent.routing.port import Gateway
from agent.security.rate_limit import RateLimiter, retry_after
from agent.settings import MqttSettings
from agent.state.finals import Entry, FinalsSpool

log = structlog.get_logger(__name__)


@dataclass
class _InFlight:
    acks: list[Ack]
    cancelled: bool = False
    submitted: bool = False
    started: bool = False
    expired: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class MqttBridge:
    def __init__(
        self,
        settings: MqttSettings,
        rate: RateLimiter,
        device_id: str,
        state_dir: Path,
        gateway: Gateway,
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.gateway = gateway
        self.topics = Topics(settings.topic_prefix, device_id, settings.pool)
        self.state = "init"
        self._ready = asyncio.Event()
        self._inflight: dict[str, _InFlight] = {}
        self._finals = AnsweredFinals(settings.dedupe_ttl_s)
        self._spooling: dict[str, Entry] = {}  # finals queued for the spool, not yet on disk
        self.spool = FinalsSpool(state_dir / f"mqtt-finals-{device_id}.jsonl")
        for entry in self.spool.load():  # finals given before a crash or restart
            route = ReplyRoute(
                entry["route"]["topic"],
                bytes.fromhex(entry["route"]["correlation"])
                if entry["route"]["correlation"] is not None
                else None,
                entry["route"]["request_id"],
            )
            self._finals.add(entry["key"], route, entry["payload"], entry["expires"])
        self._tasks: set[asyncio.Task[None]] = set()
        self.connection: Connection | None = None
        self.draining = False
        self._held: list[Received] = []  # requests received while draining
        self.rate = rate  # per device (reply topic)
        self.commands = CommandChannel(
            gateway, self._connection, self.topics, settings, lambda: self._publish_status()
        )

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def start(self) -> None:
        settings = self.settings
        self.connection = Connection(
            address=BrokerAddress.parse(settings.url or "", settings.password_file),
            client_id=f"edge-agent-{self.device_id}",
            v5=settings.protocol == "5",
            keepalive_s=settings.keepalive_s,
            session_expiry_s=settings.session_expiry_s,
            will=(self.topics.status, self._status("lost")),
            on_connect=self._on_connect,
            on_message=self._on_message,
            loop=asyncio.get_running_loop(),
            ca_file=settings.ca_file,
            cert_file=settings.cert_file,
            key_file=settings.key_file,
        )
        self.connection.start()

    async def wait_subscribed(self, timeout_s: float | None) -> bool:
        """Whether the broker took our subscriptions within `timeout_s` (None: wait)."""
        subscribed = self._connection().subscribed
        try:
            await asyncio.wait_for(subscribed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def set_state(self, state: str) -> None:
        self.state = state
        if state == "ready":
            self._ready.set()
        if self.connected:
            self._publish_status()

    def drain(self) -> None:
        """Take no new requests: they stay unacknowledged on the broker, which delivers
        them again to this session after a restart (or to the pool's other gateways)."""
        self.draining = True
        self.set_state("draining")

    def resume(self) -> None:
        """Take requests again, first those that arrived while draining."""
        self.draining = False
        self.set_state("ready")
        held, self._held = self._held, []
        for received in held:
            self._on_message(received)

    @property
    def busy(self) -> bool:
        """Requests accepted and not yet answered."""
        return bool(self._inflight)

    def publish_telemetry(self, document: Payload) -> None:
        if self.connection is not None and self.connected:
            self.connection.publish(self.topics.telemetry, document, qos=0)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `offline` (retained) and disconnect cleanly, so the Will is not sent."""
        if self.connection is None:
            return
        self.state = "offline"
        if self.connected:
            info = self._publish_status()
            await asyncio.to_thread(info.wait_for_publish, timeout_s)
        for task in list(self._tasks):
            task.cancel()
        self.commands.stop()
        await asyncio.to_thread(self.connection.stop)

    # ---- connection events (asyncio thread) -------------------------------------------

    def _connection(self) -> Connection:
        if self.connection is None:
            raise RuntimeError("the bridge has not been started")
        return self.connection

    def _on_connect(self) -> None:
        topics = [self.topics.request, self.topics.cancel]
        if self.topics.pool_request:
            topics.append(self.topics.pool_request)
        topics += [self.topics.commands, self.topics.config_desired]
        self._connection().subscribe(topics)
        self._publish_status()
        self.commands.publish_reported()

    def _status(self, state: str) -> Payload:
        return {
            "state": state,
            "session": self.connection.connects if self.connection else 0,
            "ts": time.time(),
            "version": __version__,
            "pool": self.topics.pool,  # `fleet update --pool` finds its gateways by it
            **self.gateway.describe(),
        }

    def _publish_status(self) -> MQTTMessageInfo:
        return self._connection().publish(self.topics.status, self._status(self.state), retain=True)

    def _on_message(self, received: Received) -> None:
        connection = self._connection()
        if self.commands.handles(received.topic):  # served while draining: resume must work
            self.commands.receive(received)
            return
        if received.topic == self.topics.cancel:
            connection.ack(received.mid, received.qos)
            key = cancel_key(received.payload, received.response_topic, received.correlation)
            if key is None:
                log.warning("mqtt cancel ignored: it needs the request's reply topic and id")
            else:
                self._cancel(key)
            return
        if not self.topics.is_request(received.topic):
            connection.ack(received.mid, received.qos)
            return
        if self.draining:  # unacknowledged: redelivered after a restart, or served on resume
            log.info("mqtt request held: draining", topic=received.topic)
            self._held.append(received)
            return
        task = asyncio.ensure_future(self._serve(received))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, key: str) -> None:
        entry = self._inflight.get(key)
        if entry is None:
            return
        entry.cancelled = True
        if entry.submitted:
            self.gateway.cancel(key)

    # ---- one request --------------------------------------------------------------------

    async def _serve(self, received: Received) -> None:
        inbound = (received.mid, received.qos)
        parsed = parse_request(
            received.payload,
            received.response_topic,
            received.correlation,
            self.settings.max_payload_bytes,
        )
        route = parsed.route
        if route is None:
            log.warning("mqtt request dropped: no reply topic", topic=received.topic)
            self._connection().ack(*inbound)
            return
        key = route.key
        if self._replay(key, inbound):
            return
        error = parsed.error
        wait = self.rate.take(route.topic)  # a device is known by its reply topic
        if error is None and wait > 0:
            error = EngineError(
                ErrorCode.RATE_LIMITED,
                f"Rate limit: {self.rate.per_minute:g} requests per minute",
                retry_after_s=retry_after(wait),
            )
        if error is not None or parsed.body is None:
            refusal = error or EngineError(ErrorCode.INVALID_REQUEST, "No request")
            self._reply(route, Rejected.of(route, refusal), [inbound])
            return
        entry = _InFlight(acks=[inbound])
        self._inflight[key] = entry
        loop = asyncio.get_running_loop()
        deadline = loop.time() + received.expiry_s if received.expiry_s is not None else None
        try:
            await self._ready.wait()
            if deadline is not None and loop.time() >= deadline:
                entry.expired = True
            if entry.cancelled or entry.expired:
                reason = "expired" if entry.expired else "cancelled"
                await self._finish(key, route, FinalReply.unserved(route, reason))
                return
            await self._run(key, route, parsed.body, entry, deadline)
        except EngineError as refused:
            await self._finish(key, route, Rejected.of(route, refused))
        except asyncio.CancelledError:
            self._inflight.pop(key, None)  # shutting down: unacked, so redelivered later
            raise
        except Exception as exc:  # a bug must cost one request, not the bridge
            log.exception("mqtt request failed", correlation=key)
            failure = EngineError(
                ErrorCode.INTERNAL_ERROR, f"The gateway failed on this request: {exc}"
            )
            await self._finish(key, route, Rejected.of(route, failure))

    async def _run(
        self,
        key: str,
        route: ReplyRoute,
        body: ChatCompletionRequest,
        entry: _InFlight,
        deadline: float | None,
    ) -> None:
        request = replace(body.to_internal(), request_id=key)
        loop = asyncio.get_running_loop()
        if deadline is not None:  # armed first: a cloud endpoint's first-token wait counts
            entry.timers.append(loop.call_at(deadline, self._expire, key))
        entry.submitted = True  # from here a cancel reaches the router, which holds it
        routed = await self.gateway.submit(request)
        if entry.cancelled:
            self.gateway.cancel(key)
        self._reply(route, Accepted(id=route.request_id))
        interval = self.settings.chunk_interval_ms / 1000
        pending: list[str] = []
        seq, flushed_at, pending_tokens = 0, loop.time(), 0
        reader = ReplyReader(routed.chunks)
        async for piece in reader.pieces():
            entry.started = entry.started or bool(piece.token_ids or piece.text)
            pending_tokens += len(piece.token_ids)
            if body.stream and piece.text:
                pending.append(piece.text)
            # The first text goes at once (time to first token); then batches of tokens.
            due = seq == 0 or pending_tokens >= self.settings.chunk_tokens
            if pending and (due or loop.time() - flushed_at >= interval):
                seq = self._flush(route, seq, pending)
                flushed_at, pending_tokens = loop.time(), 0
        if pending:
            seq = self._flush(route, seq, pending)
        reply = reader.result()
        reason = "expired" if entry.expired else reply.finish_reason.value
        final = FinalReply.of(
            route,
            reply,
            reason,
            backend=routed.backend,
            provider=routed.provider,
            route_reason=routed.reason,
            gateway=self.device_id,
        )
        await self._finish(key, route, final)

    def _flush(self, route: ReplyRoute, seq: int, pending: list[str]) -> int:
        """Publish the pending text as the next chunk; returns its sequence number."""
        seq += 1
        self._reply(route, ChunkReply(id=route.request_id, seq=seq, delta="".join(pending)))
        pending.clear()
        return seq

    def _expire(self, key: str) -> None:
        """Message Expiry: a request still waiting for its first token is dropped."""
        entry = self._inflight.get(key)
        if entry is not None and not entry.started:
            entry.expired = True
            self.gateway.cancel(key)

    async def _finish(self, key: str, route: ReplyRoute, reply: WireModel) -> None:
        """Spool the final, then publish it and acknowledge the request (and any
        redelivery of it that arrived meanwhile, which the in-flight entry collects)."""
        payload = reply.wire()
        expires = self._finals.expiry()
        # On disk before it is published: a crash between the two is answered from here.
        spooled = self._spooling[key] = _entry(key, expires, route, payload)
        try:
            await self.spool.save(spooled)
        finally:
            del self._spooling[key]
        self._finals.add(key, route, payload, expires)
        entry = self._inflight.pop(key, None)
        for timer in entry.timers if entry else ():
            timer.cancel()
        self._publish(route, payload, entry.acks if entry else [])
        if self.spool.compaction_due(len(self._finals)):
            # Finals still queued for the spool are kept: the rewrite runs after their save.
            live = [_entry(k, e, r, p) for k, e, r, p in self._finals]
            await self.spool.rewrite([*live, *self._spooling.values()])

    def _replay(self, key: str, inbound: Ack) -> bool:
        """A redelivered request: answered by the running one, or by its cached final."""
        entry = self._inflight.get(key)
        if entry is not None:
            entry.acks.append(inbound)
            return True
        cached = self._finals.get(key)
        if cached is not None:
            self._publish(*cached, [inbound])
            return True
        return False

    def _reply(self, route: ReplyRoute, reply: WireModel, acks: list[Ack] | None = None) -> None:
        self._publish(route, reply.wire(), acks or [])

    def _publish(self, route: ReplyRoute, payload: Payload, acks: list[Ack]) -> None:
        self._connection().publish(
            route.topic, payload, correlation=route.correlation, ack_after=acks
        )


def _entry(key: str, expires: float, route: ReplyRoute, payload: Payload) -> Entry:
    correlation = route.correlation.hex() if route.correlation is not None else None
    spooled = {"topic": route.topic, "correlation": correlation, "request_id": route.request_id}
    return {"key": key, "expires": expires, "route": spooled, "payload": payload}
