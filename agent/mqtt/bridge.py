"""The MQTT bridge: requests in, accepted/rejected/chunk/final out, cancel, retained status.

At-least-once without loss: a request is acknowledged to the broker only once its final
reply has been acknowledged by the broker (persistent session, manual acks), so a broker
or daemon restart redelivers whatever was not answered. Redeliveries are recognised by
correlation id: one in flight is answered by the running request, one already answered
gets the cached final again. Finals are spooled to the state directory before they are
published, so this holds across a crash too.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from agent import __version__
from agent.engine.types import EngineError
from agent.mqtt import messages
from agent.mqtt.connection import BrokerAddress, Connection, Received
from agent.mqtt.messages import ReplyRoute
from agent.mqtt.topics import Topics
from agent.routing.router import Router
from agent.security.rate_limit import RateLimiter, retry_after
from agent.settings import Settings
from agent.state.finals import FinalsSpool

log = structlog.get_logger(__name__)


@dataclass
class _InFlight:
    acks: list[tuple[int, int]]
    cancelled: bool = False
    submitted: bool = False
    started: bool = False
    expired: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class MqttBridge:
    def __init__(
        self, settings: Settings, router: Router, describe: Callable[[], dict[str, object]]
    ) -> None:
        self.settings = settings
        self.router = router
        self.describe = describe
        self.topics = Topics(settings.mqtt_topic_prefix, settings.device_id, settings.mqtt_pool)
        self.state = "init"
        self._ready = asyncio.Event()
        self._inflight: dict[str, _InFlight] = {}
        self._finals: OrderedDict[str, tuple[float, ReplyRoute, dict]] = OrderedDict()
        self.spool = FinalsSpool(settings.state_dir / f"mqtt-finals-{settings.device_id}.jsonl")
        for entry in self.spool.load():  # finals given before a crash or restart
            route = ReplyRoute(
                entry["route"]["topic"],
                bytes.fromhex(entry["route"]["correlation"])
                if entry["route"]["correlation"] is not None
                else None,
                entry["route"]["request_id"],
            )
            self._finals[entry["key"]] = (entry["expires"], route, entry["payload"])
        self._tasks: set[asyncio.Task] = set()
        self.connection: Connection | None = None
        self.draining = False
        self.rate = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.connected.is_set()

    async def start(self) -> None:
        settings = self.settings
        self.connection = Connection(
            address=BrokerAddress.parse(settings.mqtt_url or "", settings.mqtt_password_file),
            client_id=f"edge-agent-{settings.device_id}",
            v5=settings.mqtt_protocol == "5",
            keepalive_s=settings.mqtt_keepalive_s,
            session_expiry_s=settings.mqtt_session_expiry_s,
            will=(self.topics.status, self._status("lost")),
            on_connect=self._on_connect,
            on_message=self._on_message,
            loop=asyncio.get_running_loop(),
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
        )
        self.connection.start()

    async def wait_subscribed(self, timeout_s: float) -> bool:
        """Whether the broker took our subscriptions within `timeout_s`."""
        try:
            await asyncio.wait_for(self.connection.subscribed.wait(), timeout_s)
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

    @property
    def busy(self) -> bool:
        """Requests accepted and not yet answered."""
        return bool(self._inflight)

    def publish_telemetry(self, document: dict) -> None:
        if self.connected:
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
        await asyncio.to_thread(self.connection.stop)

    # ---- connection events (asyncio thread) -------------------------------------------

    def _on_connect(self) -> None:
        topics = [self.topics.request, self.topics.cancel]
        if self.topics.pool_request:
            topics.append(self.topics.pool_request)
        self.connection.subscribe(topics)
        self._publish_status()

    def _status(self, state: str) -> dict:
        return {
            "state": state,
            "session": self.connection.connects if self.connection else 0,
            "ts": time.time(),
            "version": __version__,
            **self.describe(),
        }

    def _publish_status(self):
        return self.connection.publish(self.topics.status, self._status(self.state), retain=True)

    def _on_message(self, received: Received) -> None:
        if received.topic == self.topics.cancel:
            self.connection.ack(received.mid, received.qos)
            key = messages.cancel_key(received)
            if key is None:
                log.warning("mqtt cancel ignored: it needs the request's reply topic and id")
            else:
                self._cancel(key)
            return
        if not self.topics.is_request(received.topic):
            self.connection.ack(received.mid, received.qos)
            return
        if self.draining:
            log.info("mqtt request left on the broker: draining", topic=received.topic)
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
            self.router.cancel(key)

    # ---- one request --------------------------------------------------------------------

    async def _serve(self, received: Received) -> None:
        inbound = (received.mid, received.qos)
        parsed = messages.parse_request(received, self.settings.mqtt_max_payload_bytes)
        route = parsed.route
        if route is None:
            log.warning("mqtt request dropped: no reply topic", topic=received.topic)
            self.connection.ack(*inbound)
            return
        key = route.key
        if self._replay(key, inbound):
            return
        wait = self.rate.take(route.topic)  # a device is known by its reply topic
        if parsed.error is None and wait > 0:
            parsed = replace(parsed, error=EngineError(
                "rate_limited", f"Rate limit: {self.rate.per_minute:g} requests per minute",
                retry_after_s=retry_after(wait)))  # fmt: skip
        if parsed.error is not None:
            self._reply(route, messages.rejected(route, parsed.error), [inbound])
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
                await self._finish(
                    key, route, messages.final(route, "", reason, None, "none", "none")
                )
                return
            await self._run(key, route, parsed.body, entry, deadline)
        except EngineError as error:
            await self._finish(key, route, messages.rejected(route, error))
        except asyncio.CancelledError:
            self._inflight.pop(key, None)  # shutting down: unacked, so redelivered later
            raise
        except Exception as exc:  # a bug must cost one request, not the bridge
            log.exception("mqtt request failed", correlation=key)
            error = EngineError("internal_error", f"The gateway failed on this request: {exc}")
            await self._finish(key, route, messages.rejected(route, error))

    async def _run(self, key, route, body, entry: _InFlight, deadline: float | None) -> None:
        request = replace(body.to_internal(), request_id=key)
        routed = await self.router.submit(request)
        entry.submitted = True
        if entry.cancelled:
            self.router.cancel(key)
        loop = asyncio.get_running_loop()
        if deadline is not None:
            entry.timers.append(loop.call_at(deadline, self._expire, key))
        self._reply(route, messages.accepted(route))
        interval = self.settings.mqtt_chunk_interval_ms / 1000
        parts: list[str] = []
        pending: list[str] = []
        seq, flushed_at, pending_tokens = 0, loop.time(), 0
        async for chunk in routed.chunks:
            entry.started = entry.started or bool(chunk.token_ids)
            parts.append(chunk.text)
            if body.stream and chunk.text:
                pending.append(chunk.text)
            pending_tokens += len(chunk.token_ids)
            # The first text goes at once (time to first token); then batches of tokens.
            due = seq == 0 or pending_tokens >= self.settings.mqtt_chunk_tokens
            due = due or (loop.time() - flushed_at) >= interval or chunk.finish_reason is not None
            if pending and due:
                seq += 1
                self._reply(route, messages.chunk(route, seq, "".join(pending)))
                pending.clear()
                flushed_at, pending_tokens = loop.time(), 0
            if chunk.finish_reason is not None:
                reason = "expired" if entry.expired else chunk.finish_reason.value
                payload = messages.final(
                    route,
                    "".join(parts),
                    reason,
                    chunk,
                    routed.backend,
                    routed.provider,
                    routed.reason,
                )
                payload["gateway"] = self.settings.device_id
                await self._finish(key, route, payload)

    def _expire(self, key: str) -> None:
        """Message Expiry: a request still waiting for its first token is dropped."""
        entry = self._inflight.get(key)
        if entry is not None and not entry.started:
            entry.expired = True
            self.router.cancel(key)

    async def _finish(self, key: str, route: ReplyRoute, payload: dict) -> None:
        """Spool the final, then publish it and acknowledge the request (and any
        redelivery of it that arrived meanwhile, which the in-flight entry collects)."""
        now = time.time()
        expires = now + self.settings.mqtt_dedupe_ttl_s
        # On disk before it is published: a crash between the two is answered from here.
        await self.spool.save({"key": key, "expires": expires, "route": _route_json(route),
                               "payload": payload})  # fmt: skip
        self._finals[key] = (expires, route, payload)
        entry = self._inflight.pop(key, None)
        for timer in entry.timers if entry else ():
            timer.cancel()
        self._reply(route, payload, entry.acks if entry else [])
        while self._finals and next(iter(self._finals.values()))[0] < now:
            self._finals.popitem(last=False)
        if self.spool.compaction_due(len(self._finals)):
            await self.spool.rewrite(
                [{"key": k, "expires": e, "route": _route_json(r), "payload": p}
                 for k, (e, r, p) in self._finals.items()]
            )  # fmt: skip

    def _replay(self, key: str, inbound: tuple[int, int]) -> bool:
        """A redelivered request: answered by the running one, or by its cached final."""
        entry = self._inflight.get(key)
        if entry is not None:
            entry.acks.append(inbound)
            return True
        cached = self._finals.get(key)
        if cached is not None and cached[0] > time.time():
            self._reply(cached[1], cached[2], [inbound])
            return True
        return False

    def _reply(self, route: ReplyRoute, payload: dict, acks: list[tuple[int, int]] = ()) -> None:
        self.connection.publish(
            route.topic, payload, correlation=route.correlation, ack_after=list(acks)
        )


def _route_json(route: ReplyRoute) -> dict[str, str | None]:
    correlation = route.correlation.hex() if route.correlation is not None else None
    return {"topic": route.topic, "correlation": correlation, "request_id": route.request_id}
