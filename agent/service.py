"""The composition root: builds the components from their settings sections, starts and
stops them in order, and is the Gateway (agent/routing/port.py) the interfaces talk to."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import generate_latest

from agent import __version__
from agent.engine.calibration import Calibration
from agent.engine.embedder import EmbeddingModel, Embeddings
from agent.engine.local import LocalEngine
from agent.engine.select import select
from agent.engine.types import ChatRequest, EngineError, ErrorCode
from agent.fleet.commands import run_command
from agent.fleet.config import RemoteConfig, follow
from agent.fleet.update import Check, ModelUpdates
from agent.hardware.inventory import HardwareInventory, detect
from agent.hardware.providers import Installed
from agent.models import requested
from agent.models.info import ModelInfo
from agent.models.profiles import ModelNames
from agent.models.pull import PullProgress
from agent.models.store import ModelStore
from agent.mqtt.bridge import MqttBridge
from agent.routing.cloud_pool import CloudPool
from agent.routing.governor import ResourceGovernor
from agent.routing.port import Readiness, Routed, ServedModel
from agent.routing.router import Router
from agent.routing.status import local_status, routing_status
from agent.security.rate_limit import RateLimiter
from agent.settings import Settings
from agent.state.conversations import Conversations
from agent.state.profiles import ProfileStore
from agent.telemetry.metrics import LiveSource, Metrics
from agent.telemetry.publisher import TelemetryPublisher

log = structlog.get_logger(__name__)

MQTT_READY_WAIT_S = 5.0  # how long "ready" waits for the broker before going on without it


class Service:
    """The daemon's parts and their lifecycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.embedding = EmbeddingModel(settings.models.embedding_model, settings.engine)
        self.hardware: HardwareInventory = detect()
        self.profile_store = ProfileStore(settings.state_dir)  # one, for every model served
        engine = self._engine = self._build_engine(settings.model_dir)
        self.cloud = CloudPool(settings.routing, settings.engine.retry_after_s)
        self.governor = ResourceGovernor(settings.governor, lambda: self.router.local.load())
        self.metrics = Metrics()
        self.router = Router(
            engine,
            self._names(engine.info),
            self.cloud,
            self.governor,
            self.metrics,
            settings.routing.default_route,
            settings.security,
        )
        self.mqtt: MqttBridge | None = None
        self.telemetry: TelemetryPublisher | None = None
        self.rate: RateLimiter | None = None
        if settings.mqtt.url:
            security = settings.security
            rate = self.rate = RateLimiter(
                security.rate_limit_per_minute, security.rate_limit_burst
            )
            self.mqtt = MqttBridge(
                settings.mqtt, rate, settings.device_id, settings.state_dir, self
            )
            self.telemetry = TelemetryPublisher(
                self.metrics,
                self.mqtt.publish_telemetry,
                settings.telemetry.interval_s,
                settings.device_id,
            )
        self.metrics.attach(
            LiveSource(
                queue_depth=lambda: self.engine.queue_depth,
                running=lambda: self.engine.running,
                batches=lambda: dict(self.engine.batches),
                breakers=lambda: self.cloud.states(),  # a fleet config may replace the pool
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
        self.stalled: str | None = None  # set by the daemon's engine watch: why no step
        self._recheck = asyncio.Event()
        self.model_path = settings.model_dir.resolve()  # the model directory serving now
        self.updates = ModelUpdates(self, self._memory_for_model, self.mqtt)
        self._served: ServedModel | None = None
        self._started = False
        self._measuring: LocalEngine | None = None  # calibrated on its first requests
        self.config = RemoteConfig(
            settings, self._config_changed, lambda name: self._names(self.info).resolve(name)
        )
        self.config.restore()
        self.conversations = Conversations(settings.http.max_stored_responses)

    @property
    def engine(self) -> LocalEngine:
        """The local engine serving now (a model switch replaces it)."""
        return self._engine

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def _build_engine(self, model: Path) -> LocalEngine:
        settings = self.settings
        threads = settings.engine.intra_op_num_threads or self.hardware.usable_cores
        self.selection = select(
            model,
            settings.models.model_variant,
            settings.engine.provider,
            settings.engine.provider_fallback,
            settings.engine.provider_options,
            self.hardware,
            Installed.probe(),
            Calibration(settings.state_dir, settings.engine.provider_objective, threads),
        )
        return LocalEngine(
            self.selection.plans,
            settings.engine,
            threads=threads,
            available_memory=self._memory_for_model,
            on_failure=self._engine_failed,
        )

    def _names(self, info: ModelInfo) -> ModelNames:
        models = self.settings.models
        return ModelNames(
            info, models.profiles, models.model_aliases, self.profile_store, models.default_model
        )

    def _engine_failed(self, engine: LocalEngine) -> None:
        """The owner thread died: /ready and /health answer 503, MQTT status `degraded`.
        A model switch (a new engine) is the way back short of a restart."""
        if engine is not self.engine:
            return  # a replaced model, already unloading
        log.error("local engine failed: not serving", reason=engine.failure)
        if self.mqtt is not None:
            self.mqtt.set_state("degraded")

    def _memory_for_model(self) -> int | None:
        """Available memory (cgroup-aware) less the reserve and an encoder not loaded yet."""
        available = detect(self.settings.governor.hardware_root).available_memory_bytes
        if available is None:
            return None
        reserve = int(self.settings.governor.memory_reserve_mb * 1024 * 1024)
        return available - reserve - self.embedding.pending_bytes

    # ---- model switches ----------------------------------------------------------------

    async def watch_model(self) -> None:
        """Switch models when the model pointer (`models_dir/active`) is swapped."""
        await self.updates.watch(self._recheck, lambda: self.draining)

    def reload(self) -> None:
        """SIGHUP: look at the model pointer now. Stored profiles are re-read on their own;
        other settings need a restart."""
        log.info("reload requested: checking the model pointer")
        self._recheck.set()

    async def switch_model(self, model: Path, check: Check | None = None) -> None:
        """Load `model` next to the serving one (and `check` it), then send new requests to
        it. Requests already admitted to the old model (or still being admitted) finish
        there; then it is unloaded."""
        log.info("model switch", model=str(model.resolve()))
        new = await asyncio.to_thread(self._build_engine, model)  # `auto` may calibrate
        await new.start()
        try:
            await self._measure_served(new)
            if check is not None:
                await check(new)
        except BaseException:  # the model loaded but failed its check: the old one serves
            await new.stop()
            raise
        self._engine, self.model_path = new, model.resolve()
        retiring = self.router.swap_local(new, self._names(new.info))
        self._served = None
        self._publish_model()
        if self.mqtt is not None:
            self.mqtt.set_state("ready")  # the retained status now names the new model
        log.info("model switched", model=new.info.name, variant=new.info.variant)
        await retiring

    async def _measure_served(self, engine: LocalEngine) -> None:
        """`auto` with one accepted provider: it is measured on the model just loaded, before
        the daemon says ready, instead of in a load of its own."""
        if self.selection.plans is engine.plans:
            self._measuring = engine
            self.router.measuring_local = engine is self.router.local  # a first start
            try:
                self.selection = await self.selection.measured_on(engine)
            finally:
                self._measuring = None
                self.router.measuring_local = False

    def _publish_model(self) -> None:
        self.metrics.load_time.set(self.engine.load_time_s)
        self.metrics.model.info(
            {
                "model": self.info.name,
                "variant": self.info.variant,
                "provider": self.engine.provider,
            }
        )

    # ---- fleet operations ----------------------------------------------------------------

    def _config_changed(self, changed: set[str]) -> None:
        """Make the components follow the settings a fleet changed (`config/desired`).
        The telemetry period follows from its next tick."""
        settings = self.settings
        follow(settings, self.router, self.governor, self.rate, self.telemetry)
        self.router.names = self._names(self.info)
        if "cloud" in changed:
            retired, retry_after_s = self.cloud, settings.engine.retry_after_s
            self.cloud = self.router.cloud = CloudPool(settings.routing, retry_after_s)
            if self._started:
                self.cloud.start()
                self._retired = asyncio.ensure_future(retired.stop())

    async def command(
        self, name: str, arguments: dict[str, Any], progress: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        return await run_command(self, name, arguments, progress)

    def apply_config(self, desired: dict[str, Any]) -> dict[str, Any]:
        return self.config.apply(desired)

    def reported_config(self) -> dict[str, Any]:
        return self.config.reported()

    def resume(self) -> None:
        """End a drain (`cmd/resume`): serve again, first the MQTT requests held meanwhile."""
        self.draining = False
        self.router.draining = False
        if self.mqtt is not None:
            self.mqtt.resume()

    # ---- the Gateway port --------------------------------------------------------------

    @property
    def names(self) -> ModelNames:
        return self.router.names

    async def submit(self, request: ChatRequest) -> Routed:
        return await self.router.submit(request)

    def cancel(self, request_id: str) -> bool:
        return self.router.cancel(request_id)

    def readiness(self) -> Readiness:
        """Ready only while the engine's owner thread lives, steps and takes requests; a dead
        one says why (/ready and /health answer 503, the MQTT status is `degraded`), a stalled
        one too (/ready answers 503)."""
        engine = self.engine
        if engine.failure is not None:
            return Readiness("engine_failed", engine.failure)
        if self.stalled is not None:
            return Readiness("stalled", self.stalled)
        if self.draining:
            return Readiness("draining")
        if engine is self._measuring:  # a first start's calibration: local requests are refused
            return Readiness("loading", "measuring the provider")
        return Readiness("ready" if engine.ready and engine.alive else "loading")

    def served_model(self) -> ServedModel:
        if self._served is None:
            info = self.info
            files = [p for p in info.path.iterdir() if p.is_file()]
            self._served = ServedModel(
                name=info.name,
                variant=info.variant,
                precision=info.precision,
                family=str(info.manifest.get("family", "llama")),
                parameter_size=str(info.manifest.get("parameter_size", "")),
                context_length=info.context_length,
                provider=self.engine.provider,
                size_bytes=sum(p.stat().st_size for p in files),
                modified_at=info.path.stat().st_mtime,
            )
        return self._served

    def metrics_text(self) -> bytes:
        return generate_latest(self.metrics.registry)

    def render_prompt(self, request: ChatRequest) -> str:
        return self.engine.render_prompt(self.router.prepare(request))

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [int(t) for t in self.engine.tokenize(text)]
        if not add_special_tokens:  # what the tokenizer adds to any text (BOS) comes off
            added = [int(t) for t in self.engine.tokenize("")]
            ids = ids[len(added) :] if ids[: len(added)] == added else ids
        return ids

    def detokenize(self, tokens: Sequence[int]) -> str:
        config = json.loads((self.info.path / "genai_config.json").read_text())
        vocabulary = int(config["model"]["vocab_size"])
        if outside := [t for t in tokens if not 0 <= t < vocabulary]:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"Token ids {outside[:8]} are outside the vocabulary (0..{vocabulary - 1})",
                param="tokens",
            )
        return self.engine.detokenize(tokens)

    async def embed(self, texts: Sequence[str], model: str | None, truncate: bool) -> Embeddings:
        return await self.embedding.embed(texts, model, truncate)

    def max_model_len(self) -> int:
        return self.engine.max_length

    async def pull(self, name: str) -> AsyncIterator[PullProgress]:
        store = ModelStore(self.settings.models_root)
        return requested.start_pull(name, self.settings.engine.provider, self.hardware, store)

    def remove_model(self, name: str) -> None:
        requested.remove(name, self.settings.models_root)

    def describe(self) -> dict[str, Any]:
        """What the MQTT status and telemetry say about the model and backends."""
        engine = self.engine
        local = "failed" if engine.failure else "ready" if engine.ready else "loading"
        return {
            "device_id": self.settings.device_id,
            "model": self.info.name,
            "variant": self.info.variant,
            "variant_path": str(self.info.path),
            "model_version": self.info.manifest.get("version"),
            "provider": engine.provider,
            "backends": {"local": local, **self.cloud.states()},
        }

    def status(self) -> dict[str, Any]:
        mqtt = self.mqtt
        return {
            "version": __version__,
            "device_id": self.settings.device_id,
            "state": self.readiness().state,
            "uptime_s": round(time.time() - self.started_at, 1),
            **local_status(self.engine, self.names, self.selection),
            "embedding_model": self.embedding.describe(),
            "hardware": self.hardware.to_dict(),
            "routing": routing_status(self.router, self.governor, self.cloud, self.metrics),
            "mqtt": {
                "enabled": mqtt is not None,
                "connected": mqtt.connected if mqtt else False,
                "state": mqtt.state if mqtt else None,
            },
        }

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.start()  # status `init` while the model loads
        await self.engine.start()
        await self._measure_served(self.engine)
        await self.embedding.start()  # after the chat model, whose memory check counted it
        self.governor.start()
        self.cloud.start()
        self._publish_model()
        if self.mqtt is not None:
            self.mqtt.set_state("ready")
            if not await self.mqtt.wait_subscribed(MQTT_READY_WAIT_S):
                log.warning("mqtt not connected yet; serving HTTP, retrying the broker")
        if self.telemetry is not None:
            self.telemetry.start()
        self._started = True
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
        mqtt_busy = self.mqtt is not None and self.mqtt.busy
        return not self.engine.idle or mqtt_busy

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


def _mib_to_bytes(value: float | None) -> float | None:
    return None if value is None else value * 1024 * 1024
