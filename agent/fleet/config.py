"""Remote configuration, like a device twin: `config/desired` is validated whole, applied
live, persisted atomically in `state_dir`, and `config/reported` says what is in force.

Only the settings a fleet changes remotely are accepted (FLEET_SETTINGS, by their flat
names). The desired document is the whole wish: a setting it leaves out returns to the
gateway's own value. Settings given on the gateway's command line or in its environment win;
the reported document names them and where they came from. The config file is the
gateway's own value, which the fleet may override.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from agent.engine.types import EngineError, ErrorCode
from agent.protocol.commands import ReportedConfig
from agent.routing.governor import ResourceGovernor
from agent.routing.router import Router
from agent.security.rate_limit import RateLimiter
from agent.settings import Settings
from agent.settings.sections import FLAT, SECTIONS, CloudEndpoint, ModelsSettings, Section
from agent.state.files import atomic_write
from agent.telemetry.publisher import TelemetryPublisher

log = structlog.get_logger(__name__)

FLEET_SETTINGS = (
    "default_route",
    "cloud",
    "latency_budget_s",
    "memory_reserve_mb",
    "memory_resume_mb",
    "cpu_enter_percent",
    "cpu_leave_percent",
    "temperature_enter_c",
    "temperature_leave_c",
    "battery_enter_percent",
    "battery_leave_percent",
    "telemetry_interval_s",
    "rate_limit_per_minute",
    "rate_limit_burst",
    "default_model",
)
ENV_PREFIX = "EDGE_AGENT_"


class RemoteConfig:
    def __init__(
        self,
        settings: Settings,
        apply: Callable[[set[str]], None],
        check_model: Callable[[str], object],
    ) -> None:
        """`apply` makes the components follow the changed settings (flat names);
        `check_model` raises EngineError for a default model the gateway cannot serve."""
        self.settings = settings
        self._apply = apply
        self._check_model = check_model
        self.path = settings.state_dir / "fleet-config.json"
        self.baseline = {flat: self._value(flat) for flat in FLEET_SETTINGS}
        self.pinned = {
            flat: source
            for flat in FLEET_SETTINGS
            if (source := settings.sources.get(flat)) in ("command line", "environment")
        }
        self.version: int | str | None = None
        self.status: Literal["applied", "rejected", "default"] = "default"
        self.error: str | None = None

    def restore(self) -> None:
        """Apply the document persisted by the last accepted `config/desired`."""
        try:
            document = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error(
                "persisted fleet config unreadable; ignored", path=str(self.path), error=str(exc)
            )
            return
        self.apply(document, persist=False)

    def reload(self) -> None:
        """Re-read the persisted document (`cmd/reload`)."""
        self.restore()

    def apply(self, document: dict[str, Any], *, persist: bool = True) -> dict[str, Any]:
        """Validate the whole document; in force at once, or refused whole with the reason.
        Returns the reported document either way."""
        wanted = dict(document)
        version = wanted.pop("version", None)
        try:
            sections = self._validated(wanted)
        except EngineError as refused:
            self.status, self.error = "rejected", refused.message
            self.version = version if isinstance(version, int | str) else None
            log.warning("fleet config rejected", version=self.version, reason=refused.message)
            return self.reported()
        changed = set()
        for flat in FLEET_SETTINGS:
            section, name = FLAT[flat]
            value = getattr(sections[section], name)
            if flat not in self.pinned and self._value(flat) != value:
                setattr(getattr(self.settings, section), name, value)
                changed.add(flat)
        if persist:
            atomic_write(self.path, json.dumps(document, sort_keys=True).encode())
        self.status, self.error = "applied", None
        self.version = version if isinstance(version, int | str) else None
        if changed:
            self._apply(changed)
        log.info("fleet config applied", version=self.version, changed=sorted(changed))
        return self.reported()

    def reported(self) -> dict[str, Any]:
        return ReportedConfig(
            version=self.version,
            status=self.status,
            error=self.error,
            in_force={flat: _shown(self._value(flat)) for flat in FLEET_SETTINGS},
            overridden=self.pinned,
            ts=time.time(),
        ).wire()

    def _validated(self, wanted: dict[str, Any]) -> dict[str, Section]:
        unknown = sorted(set(wanted) - set(FLEET_SETTINGS))
        if unknown:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"not settings a fleet may change: {', '.join(unknown)} "
                f"(allowed: {', '.join(FLEET_SETTINGS)})",
            )
        values = {**self.baseline, **wanted}
        if isinstance(values["cloud"], list):
            values["cloud"] = [_endpoint(spec) for spec in values["cloud"]]
        sections: dict[str, Section] = {}
        problems = []
        for section in sorted({FLAT[flat][0] for flat in FLEET_SETTINGS}):
            current = getattr(self.settings, section)
            fields = {FLAT[f][1]: values[f] for f in FLEET_SETTINGS if FLAT[f][0] == section}
            try:
                sections[section] = SECTIONS[section].model_validate({**dict(current), **fields})
            except ValidationError as exc:
                names = {FLAT[f][1]: f for f in FLEET_SETTINGS}
                problems += [
                    f"{names.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors()
                ]
        if problems:
            raise EngineError(ErrorCode.INVALID_REQUEST, "; ".join(problems))
        models = sections["models"]
        default_model = models.default_model if isinstance(models, ModelsSettings) else None
        if default_model is not None and "default_model" not in self.pinned:
            self._check_model(default_model)
        return sections

    def _value(self, flat: str) -> Any:
        section, name = FLAT[flat]
        return getattr(getattr(self.settings, section), name)


def _endpoint(spec: object) -> object:
    """`openai=URL#model` as on the command line, or an object with kind and base_url."""
    if isinstance(spec, str):
        try:
            return CloudEndpoint.parse(spec)
        except ValueError as exc:
            raise EngineError(ErrorCode.INVALID_REQUEST, f"cloud: {exc}") from None
    return spec


def _shown(value: Any) -> Any:
    """JSON for the reported document; a cloud endpoint without its key."""
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        fields = asdict(value)
        return {k: v for k, v in fields.items() if k in ("kind", "base_url", "model")}
    if isinstance(value, Path):
        return str(value)
    return value


def follow(
    settings: Settings,
    router: Router,
    governor: ResourceGovernor,
    rate: RateLimiter | None,
    telemetry: TelemetryPublisher | None,
) -> None:
    """Make the components follow changed settings. The governor's signals keep their
    values and states; the telemetry period applies from its next tick."""
    router.default_route = settings.routing.default_route
    if rate is not None:
        rate.per_minute = settings.security.rate_limit_per_minute
        rate.burst = settings.security.rate_limit_burst
    if telemetry is not None:
        telemetry.interval_s = settings.telemetry.interval_s
    limits = settings.governor
    levels = (
        (governor.memory, limits.memory_reserve_mb, limits.memory_resume_mb),
        (governor.cpu, limits.cpu_enter_percent, limits.cpu_leave_percent),
        (governor.heat, limits.temperature_enter_c, limits.temperature_leave_c),
        (governor.battery, limits.battery_enter_percent, limits.battery_leave_percent),
        (governor.queue, limits.latency_budget_s, limits.latency_budget_s * 0.8),
    )
    for signal, enter, leave in levels:
        signal.enter, signal.leave = enter, leave
