"""Wiring: build the components from Settings, start them in order, stop them cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

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
from agent.routing.router import RequestLimits, Router
from agent.settings import Settings
from agent.state.profiles import ProfileStore
from agent.supervision.notify import Notifier
from agent.supervision.watchdog import EngineWatch, ping_while_healthy
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
        self.engine = self._build_engine(settings.model)
        self.profile_store = ProfileStore(settings.state_dir)  # one, for every model served
        self.names = self._names(self.info)
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
            self.engine,
            self.names,
            self.cloud,
            self.governor,
            self.metrics,
            settings.default_route,
            RequestLimits(settings.max_messages, settings.max_completion_tokens),
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
                batches=lambda: dict(self.engine.batches),
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
        self._recheck = asyncio.Event()

    def _build_engine(self, model: Path) -> LocalEngine:
        settings = self.settings
        self.selection = select(
            model,
            settings.model_variant,
            settings.provider,
            settings.provider_fallback,
            settings.provider_options,
            self.hardware,
            Installed.probe(),
        )
        return LocalEngine(
            self.selection.plans,
            EngineLimits(
                max_context=settings.max_context,
                max_batch=settings.max_batch,
                max_queue=settings.max_queue,
                max_tool_calls=settings.max_tool_calls,
                default_max_tokens=settings.default_max_tokens,
                retry_after_s=settings.retry_after_s,
                batch_window_s=settings.batch_window_ms / 1000,
                stream_interval_s=settings.stream_interval_ms / 1000,
                fit_context=settings.fit_context,
                max_prompt_tokens=settings.max_prompt_tokens,
            ),
            threads=settings.intra_op_num_threads or self.hardware.usable_cores,
            available_memory=self._memory_for_model,
        )

    async def watch_model(self) -> None:
        """Switch models when the model pointer (`models_dir/active`) is swapped."""
        pointer = self.settings.model
        loaded = pointer.resolve()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._recheck.wait(), self.settings.model_watch_interval_s)
            self._recheck.clear()
            target = pointer.resolve()
            if target == loaded or self.draining:
                continue
            try:
                await self.switch_model(pointer)
            except Exception as exc:  # a bad model must not take the serving one down
                log.error("model switch failed; the old model keeps serving", error=str(exc))
            loaded = target  # switched, or refused: do not retry the same target in a loop

    def reload(self) -> None:
        """SIGHUP: look at the model pointer now. Stored profiles are re-read on their own;
        other settings need a restart."""
        log.info("reload requested: checking the model pointer")
        self._recheck.set()

    async def switch_model(self, model: Path) -> None:
        """Load `model` next to the serving one, then send new requests to it. Requests
        already queued or running finish on the old model, which is then unloaded."""
        log.info("model switch", model=str(model.resolve()))
        new = self._build_engine(model)
        await new.start()
        old = self.engine
        self.engine = self.router.local = self.governor.engine = new
        self.router.previous = old
        self.names = self.router.names = self._names(new.info)
        self._publish_model()
        if self.mqtt is not None:
            self.mqtt.set_state("ready")  # the retained status now names the new model
        log.info("model switched", model=new.info.name, variant=new.info.variant)
        while old.running or old.queue_depth:
            await asyncio.sleep(0.05)
        await old.stop()
        self.router.previous = None

    def _names(self, info: ModelInfo) -> ModelNames:
        settings = self.settings
        return ModelNames(info, settings.profiles, settings.model_aliases, self.profile_store)

    def _publish_model(self) -> None:
        self.metrics.load_time.set(self.engine.load_time_s)
        self.metrics.model.info(
            {
                "model": self.info.name,
                "variant": self.info.variant,
                "provider": self.engine.provider,
            }
        )

    def _memory_for_model(self) -> int | None:
        """What a model may take now: available memory (cgroup-aware) minus the reserve."""
        available = detect(self.settings.hardware_root).available_memory_bytes
        if available is None:
            return None
        return available - int(self.settings.memory_reserve_mb * 1024 * 1024)

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
        self._publish_model()
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

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for the accepted ones (local and MQTT) to finish.
        True if they all did within `timeout_s`; the rest are cancelled by `stop`."""
        self.draining = True
        self.router.draining = True
        if self.mqtt is not None:
            self.mqtt.drain()
        deadline = time.monotonic() + timeout_s
        while self._busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self._busy()

    def _busy(self) -> bool:
        engine = self.engine
        mqtt_busy = self.mqtt is not None and self.mqtt.busy
        return engine.running > 0 or engine.queue_depth > 0 or mqtt_busy

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        engine = self.engine
        return (
            f"serving {self.info.name} on {engine.provider}: {engine.running} running, "
            f"{engine.queue_depth} queued"
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


async def _announce_ready(service: Service, notifier: Notifier) -> None:
    """READY=1 once the model is loaded, HTTP is bound and MQTT (if configured) is
    subscribed; HTTP already serves while the broker is still out of reach."""
    if service.mqtt is not None and not service.mqtt.connection.subscribed.is_set():
        notifier.status("waiting for the MQTT broker")
        await service.mqtt.connection.subscribed.wait()
    notifier.ready(service.summary())


async def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM: bind HTTP first (so /health and /ready answer while the
    model loads), load the model, log one ready line and tell systemd READY=1. On a
    signal: STOPPING=1, drain (no new requests; running ones get `drain_timeout_s`),
    MQTT status `offline`, exit 0. Returns the process exit code."""
    notifier = Notifier()
    service = Service(settings)
    server = _Server(
        uvicorn.Config(
            create_app(service),
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, service.reload)
    notifier.status("binding HTTP")
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            return 1  # uvicorn already logged why (port in use, bad address)
        await asyncio.sleep(0.01)
    notifier.status(f"loading model {service.info.name}")
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
    announce = asyncio.create_task(_announce_ready(service, notifier))
    watch = EngineWatch(  # reads service.engine each time: a model switch replaces it
        steps=lambda: service.engine.steps,
        busy=lambda: service.engine.running > 0,
        alive=lambda: service.engine.alive,
        stall_s=settings.engine_stall_s,
    )
    watchdog = asyncio.create_task(ping_while_healthy(notifier, watch, service.summary))
    switcher = asyncio.create_task(service.watch_model())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    notifier.stopping("draining")
    log.info("draining", timeout_s=settings.drain_timeout_s)
    drained = await service.drain(settings.drain_timeout_s)
    server.should_exit = True
    await serving
    for task in (announce, watchdog, switcher, stopped):
        task.cancel()
    await service.stop()
    log.info("stopped", drained=drained)
    return 0
