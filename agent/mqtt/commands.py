"""Fleet commands (`.../cmd/{name}`) and remote configuration (`.../config/desired`) for the
bridge. Each command is answered `accepted` (or `rejected`), then `progress` at most once a
second, then one `final`; a repeated request id (under the same reply topic) gets the same
final, never a second run. Every command is logged with its id and outcome, never with its
arguments (they may hold credentials)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from agent.engine.types import EngineError, ErrorCode
from agent.mqtt.answered import AnsweredFinals
from agent.mqtt.connection import Ack, Connection, Payload, Received
from agent.mqtt.topics import Topics
from agent.protocol.commands import (
    CommandFailed,
    CommandFinal,
    ProgressReply,
    parse_command,
    parse_document,
)
from agent.protocol.mqtt import Accepted, Rejected, ReplyRoute
from agent.routing.port import Gateway
from agent.settings import MqttSettings

log = structlog.get_logger(__name__)
GATEWAY_COMMANDS = frozenset({"drain", "resume", "reload", "update_model", "rollback"})
COMMANDS = GATEWAY_COMMANDS | {"rebirth"}
PROGRESS_INTERVAL_S = 1.0


@dataclass
class _Running:
    acks: list[Ack]
    last_progress: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class CommandChannel:
    def __init__(
        self,
        gateway: Gateway,
        connection: Callable[[], Connection],
        topics: Topics,
        settings: MqttSettings,
        rebirth: Callable[[], object],
    ) -> None:
        self.gateway = gateway
        self._connection = connection
        self.topics = topics
        self.settings = settings
        self._rebirth = rebirth  # republishes the retained status
        self._running: dict[str, _Running] = {}
        self._finals = AnsweredFinals(settings.dedupe_ttl_s)

    def handles(self, topic: str) -> bool:
        return self.topics.is_command(topic) or topic == self.topics.config_desired

    def receive(self, received: Received) -> None:
        if received.topic == self.topics.config_desired:
            self._desired(received)
        else:
            self._command(received)

    def publish_reported(self, document: Payload | None = None) -> None:
        reported = document if document is not None else self.gateway.reported_config()
        self._connection().publish(self.topics.config_reported, reported, retain=True)

    def stop(self) -> None:
        for running in self._running.values():
            if running.task is not None:
                running.task.cancel()

    # ---- config/desired -----------------------------------------------------------------

    def _desired(self, received: Received) -> None:
        document, error = parse_document(received.payload)
        if error is None:
            reported = self.gateway.apply_config(document)
        else:
            reported = {**self.gateway.reported_config(), "status": "rejected"}
            reported["error"] = error.message
            log.warning("fleet config rejected", reason=error.message)
        self.publish_reported(reported)
        self._connection().ack(received.mid, received.qos)

    # ---- cmd/{name} ---------------------------------------------------------------------

    def _command(self, received: Received) -> None:
        inbound = (received.mid, received.qos)
        name = received.topic.rsplit("/", 1)[-1]
        parsed = parse_command(
            received.payload,
            received.response_topic,
            received.correlation,
            self.settings.max_payload_bytes,
        )
        route = parsed.route
        if route is None:
            log.warning("mqtt command dropped: no reply topic", command=name)
            self._connection().ack(*inbound)
            return
        key = route.key
        if self._replay(key, inbound):
            return
        error = parsed.error
        if error is None and name not in COMMANDS:
            known = ", ".join(sorted(COMMANDS))
            error = EngineError(ErrorCode.NOT_FOUND, f"No command {name!r} (known: {known})")
        if error is not None:
            log.info("mqtt command", command=name, id=_shown_id(route), outcome="rejected")
            self._publish(route, Rejected.of(route, error).wire(), [inbound])
            return
        running = self._running[key] = _Running(acks=[inbound])
        self._publish(route, Accepted(id=route.request_id).wire(), [])
        running.task = asyncio.ensure_future(self._run(name, key, route, parsed.arguments))

    async def _run(self, name: str, key: str, route: ReplyRoute, arguments: Payload) -> None:
        try:
            if name == "rebirth":
                self._rebirth()
                self.publish_reported()
                result: Payload = {"republished": ["status", "config/reported"]}
            else:
                result = await self.gateway.command(
                    name, arguments, lambda report: self._progress(key, route, report)
                )
            final = CommandFinal(id=route.request_id, command=name, ok=True, result=result)
        except EngineError as failed:
            final = CommandFinal(
                id=route.request_id,
                command=name,
                ok=False,
                error=failed.message,
                result=failed.result if isinstance(failed, CommandFailed) else {},
            )
        except asyncio.CancelledError:
            self._running.pop(key, None)  # shutting down: unacked, so redelivered later
            raise
        except Exception as exc:  # a bug must cost one command, not the bridge
            log.exception("mqtt command failed", command=name, id=_shown_id(route))
            final = CommandFinal(
                id=route.request_id, command=name, ok=False, error=f"internal error: {exc}"
            )
        outcome = "ok" if final.ok else f"failed: {final.error}"
        log.info("mqtt command", command=name, id=_shown_id(route), outcome=outcome)
        payload = final.wire()
        self._finals.add(key, route, payload, self._finals.expiry())
        running = self._running.pop(key, None)
        self._publish(route, payload, running.acks if running else [])

    def _progress(self, key: str, route: ReplyRoute, report: Payload) -> None:
        """At most one progress reply a second per command; the rest are dropped."""
        running = self._running.get(key)
        now = time.monotonic()
        if running is None or now - running.last_progress < PROGRESS_INTERVAL_S:
            return
        running.last_progress = now
        reply = ProgressReply(id=route.request_id, **report)
        self._publish(route, reply.wire(), [])

    def _replay(self, key: str, inbound: Ack) -> bool:
        """The same request again: answered by the running command or its final."""
        running = self._running.get(key)
        if running is not None:
            running.acks.append(inbound)
            return True
        cached = self._finals.get(key)
        if cached is not None:
            self._publish(*cached, [inbound])
            return True
        return False

    def _publish(self, route: ReplyRoute, payload: Payload, acks: list[Ack]) -> None:
        self._connection().publish(
            route.topic, payload, correlation=route.correlation, ack_after=acks
        )


def _shown_id(route: ReplyRoute) -> str | None:
    if route.request_id is not None:
        return route.request_id
    return route.correlation.hex() if route.correlation is not None else None
