"""Wiring: build the components from Settings, start them in order, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator

import structlog
import uvicorn

from agent import __version__
from agent.api.app import create_app
from agent.engine.local import EngineLimits, LocalEngine
from agent.hardware.profile import HardwareProfile, detect
from agent.hardware.providers import Installed
from agent.hardware.select import select
from agent.models.local import ModelInfo
from agent.models.profiles import ModelNames
from agent.mqtt.bridge import MqttBridge
from agent.routing.cloud_pool import CloudPool
from agent.routing.governor import GovernorLimits, ResourceGovernor
from agent.routing.router import Router
from agent.settings import Settings
from agent.telemetry.metrics import LiveSource, Metrics, totals_by
from agent.telemetry.publisher import TelemetryPublisher

log = structlog.get_logger(__name__)

MQTT_READY_WAIT_S = 5.0  # how long "ready" waits for the broker before going on without it


class Service:
    """The daemon's parts and their lifecycle; the HTTP app reads its state from here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.hardware: HardwareProfile = detect()
        self.selection = select(
            settings.model,
            settings.model_variant,
            settings.provider,
            settings.provider_fallback,
            settings.provider_options,
            self.hardware,
            Installed.probe(),
        )
        self.engine = LocalEngine(
            self.selection.plans,
            EngineLimits(
                max_context=settings.max_context,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
                max_tool_calls=settings.max_tool_calls,
                default_max_tokens=settings.default_max_tokens,
                retry_after_s=settings.retry_after_s,
                batch_window_s=settings.batch_window_ms / 1000,
            ),
            threads=settings.intra_op_num_threads or self.hardware.usable_cores,
        )
        self.names = ModelNames(self.info, settings.profiles)
        self.cloud = CloudPool(
            settings.cloud,
            failures=settings.breaker_failures,
            cooldown_s=settings.breaker_cooldown_s,
            probe_interval_s=settings.probe_interval_s,
            retry_after_s=settings.retry_after_s,
        )
        self.governor = ResourceGovernor(
            GovernorLimits(
                memory_reserve_mb=settings.memory_reserve_mb,
                memory_resume_mb=settings.memory_resume_mb,
                cpu_enter_percent=settings.cpu_enter_percent,
                cpu_leave_percent=settings.cpu_leave_percent,
                temperature_enter_c=settings.temperature_enter_c,
                temperature_leave_c=settings.temperature_leave_c,
                battery_enter_percent=settings.battery_enter_percent,
                battery_leave_percent=settings.battery_leave_percent,
                latency_budget_s=settings.latency_budget_s,
                interval_s=settings.governor_interval_s,
            ),
            self.engine,
            settings.hardware_root,
        )
        self.metrics = Metrics()
        self.router = Router(
            self.engine, self.names, self.cloud, self.governor, self.metrics, settings.default_route
        )
        self.mqtt = MqttBridge(settings, self.router, self.describe) if settings.mqtt_url else None
        self.telemetry = None
        if self.mqtt is not None:
            self.telemetry = TelemetryPublisher(
                self.metrics,
                self.mqtt.publish_telemetry,
                settings.telemetry_interval_s,
                settings.device_id,
            )
        self.metrics.attach(
            LiveSource(
                queue_depth=lambda: self.engine.queue_depth,
                running=lambda: self.engine.running,
                breakers=self.cloud.states,
                memory_available_bytes=lambda: _mib_to_bytes(self.governor.memory.value),
                temperature_c=lambda: self.governor.heat.value,
                battery_percent=lambda: self.governor.battery.value,
                mqtt_connected=lambda: self.mqtt.connected if self.mqtt else None,
                mqtt_connects=lambda: (
                    self.mqtt.connection.connects if self.mqtt and self.mqtt.connection else 0
                ),
            )
        )
        self.draining = False

    @property
    def info(self) -> ModelInfo:
        """The loaded variant (before loading: the first candidate's)."""
        return self.engine.info

    @property
    def ready(self) -> bool:
        return self.engine.ready and not self.draining

    def describe(self) -> dict[str, object]:
        """What the MQTT status and telemetry say about the model and backends."""
        return {
            "device_id": self.settings.device_id,
            "model": self.info.name,
            "variant": self.info.variant,
            "variant_path": str(self.info.path),
            "provider": self.engine.provider,
            "backends": {
                "local": "ready" if self.engine.ready else "loading",
                **self.cloud.states(),
            },
        }

    async def start(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.start()  # status `init` while the model loads
        await self.engine.start()
        self.governor.start()
        self.cloud.start()
        self.metrics.load_time.set(self.engine.load_time_s)
        self.metrics.model.info(
            {
                "model": self.info.name,
                "variant": self.info.variant,
                "provider": self.engine.provider,
            }
        )
        if self.mqtt is not None:
            self.mqtt.set_state("ready")
            if not await self.mqtt.wait_subscribed(MQTT_READY_WAIT_S):
                log.warning("mqtt not connected yet; serving HTTP, retrying the broker")
        if self.telemetry is not None:
            self.telemetry.start()
        log.info(
            "model loaded",
            model=self.info.name,
            variant=self.info.variant,
            provider=self.engine.provider,
            max_length=self.engine.max_length,
            load_time_s=round(self.engine.load_time_s, 3),
        )

    async def stop(self) -> None:
        self.draining = True
        if self.telemetry is not None:
            await self.telemetry.stop()
        if self.mqtt is not None:
            await self.mqtt.stop()
        await self.governor.stop()
        await self.cloud.stop()
        await self.engine.stop()

    def status(self) -> dict:
        engine = self.engine
        return {
            "version": __version__,
            "device_id": self.settings.device_id,
            "state": "ready" if self.ready else ("draining" if self.draining else "loading"),
            "uptime_s": round(time.time() - self.started_at, 1),
            "model": {
                "name": self.info.name,
                "variant": self.info.variant,
                "precision": self.info.precision,
                "path": str(self.info.path),
                "context_length": self.info.context_length,
                "max_length": engine.max_length,
                "kv_cache_bytes_per_token": self.info.kv_bytes_per_token,
                "load_time_s": round(engine.load_time_s, 3),
                "names": self.names.listed(),
            },
            "provider": engine.provider,
            "provider_attempts": engine.load_attempts,
            "threads": engine.threads,
            "hardware": self.hardware.to_dict(),
            "queue": {
                "depth": engine.queue_depth,
                "running": engine.running,
                "max_queue": engine.limits.max_queue,
                "max_batch": engine.limits.max_batch,
            },
            "engine_steps": engine.steps,
            "finished": dict(engine.finished),
            "routing": {
                "default_route": self.router.default_route,
                "signals": self.governor.state(),
                "estimated_wait_s": round(self.governor.estimated_wait_s(), 3),
                "service_time_s": self.governor.service_time_s,
                "breakers": self.cloud.states(),
                "requests": totals_by(self.metrics.requests, "backend"),
                "fallbacks": totals_by(self.metrics.fallbacks, "reason"),
            },
            "mqtt": {
                "enabled": self.mqtt is not None,
                "connected": self.mqtt.connected if self.mqtt else False,
                "state": self.mqtt.state if self.mqtt else None,
            },
        }


def _mib_to_bytes(value: float | None) -> float | None:
    return None if value is None else value * 1024 * 1024


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run` owns SIGTERM/SIGINT (clean exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM: bind HTTP first (so /health and /ready answer while the
    model loads), load the model, log one ready line. Returns the process exit code."""
    service = Service(settings)
    server = _Server(
        uvicorn.Config(
            create_app(service),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: setattr(server, "should_exit", True))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1  # uvicorn already logged why (port in use, bad address)
        await asyncio.sleep(0.01)
    try:
        await service.start()
    except Exception as exc:
        log.error("model load failed", model=str(settings.model), error=str(exc))
        server.should_exit = True
        await serving
        return 1
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    log.info(
        "ready",
        url=f"http://{host}:{port}",
        model=service.info.name,
        variant=service.info.variant,
        provider=service.engine.provider,
    )
    await serving
    await service.stop()
    log.info("stopped")
    return 0
