"""The daemon side of the fleet commands the gateway carries out itself (`cmd/drain`,
`cmd/resume`, `cmd/reload`, `cmd/update_model`, `cmd/rollback`); the bridge answers
`cmd/rebirth` on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from agent.engine.types import EngineError, ErrorCode
from agent.fleet.config import RemoteConfig
from agent.fleet.update import ModelUpdates
from agent.routing.port import Readiness
from agent.settings import Settings


class Operated(Protocol):
    """What the commands need of the service."""

    settings: Settings
    config: RemoteConfig
    updates: ModelUpdates

    async def drain(self, timeout_s: float) -> bool: ...

    def resume(self) -> None: ...

    def reload(self) -> None: ...

    def readiness(self) -> Readiness: ...


async def run_command(
    daemon: Operated,
    name: str,
    arguments: dict[str, Any],
    progress: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    if name == "drain":  # new requests are refused (HTTP) or held (MQTT) until `resume`
        timeout_s = arguments.get("timeout_s", daemon.settings.drain_timeout_s)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s < 0:
            raise EngineError(ErrorCode.INVALID_REQUEST, "timeout_s: a number of seconds >= 0")
        idle = await daemon.drain(float(timeout_s))
        return {"state": "draining", "idle": idle}
    if name == "resume":
        daemon.resume()
        return {"state": daemon.readiness().state}
    if name == "reload":  # the persisted fleet config, and the model pointer (checked now)
        daemon.config.reload()
        daemon.reload()
        return {"config": daemon.config.status}
    if name == "update_model":
        return await daemon.updates.update(arguments, progress)
    if name == "rollback":
        return await daemon.updates.rollback()
    raise EngineError(ErrorCode.NOT_FOUND, f"No command {name!r}")
