"""The process: HTTP bound first (so /health and /ready answer while the model loads), the
service started, systemd told READY=1, then SIGTERM/SIGINT drains and stops it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import structlog
import uvicorn

from agent.api.app import create_app
from agent.service import Service
from agent.settings import Settings
from agent.supervision.notify import Notifier
from agent.supervision.watchdog import EngineWatch, watch_engine

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run` owns SIGTERM/SIGINT (clean exit 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _announce_ready(service: Service, notifier: Notifier) -> None:
    """READY=1 once the model is loaded, HTTP is bound and MQTT (if configured) is
    subscribed; HTTP already serves while the broker is still out of reach."""
    if service.mqtt is not None and not await service.mqtt.wait_subscribed(0):
        notifier.status("waiting for the MQTT broker")
        await service.mqtt.wait_subscribed(None)
    notifier.ready(service.summary())


async def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM: bind HTTP first, load the model, log one ready line and
    tell systemd READY=1. On a signal: STOPPING=1, drain (no new requests; running ones get
    `drain_timeout_s`), MQTT status `offline`, exit 0. Returns the process exit code."""
    notifier = Notifier()
    service = Service(settings)
    server = _Server(
        uvicorn.Config(
            create_app(service, settings.security),
            host=settings.http.host,
            port=settings.http.port,
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
        log.error("model load failed", model=str(settings.model_dir), error=str(exc))
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
        stall_s=settings.engine.engine_stall_s,
    )
    watchdog = asyncio.create_task(
        watch_engine(
            notifier, watch, service.summary, lambda stall: setattr(service, "stalled", stall)
        )
    )
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
