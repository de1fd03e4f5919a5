"""The real model (SmolLM2-135M-Instruct, built by `make real-model`) behind the daemon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.engine.loading import LoadPlan
from agent.engine.local import LocalEngine
from agent.models.info import resolve_model
from agent.settings import EngineSettings
from tests.conftest import REPO, Daemon, start_daemon
from tests.mqtt_support import Broker

REAL = REPO / "models" / "real"
MODEL = REAL / "smollm2-135m-instruct"
NAME = "smollm2-135m-instruct"
DEVICE = "gw-real"


def _require_model() -> None:
    if not (REAL / "reference.json").is_file():
        pytest.fail(f"{REAL} has no real model: run `make real-model` (make test does)")


@pytest.fixture(scope="session")
def real_reference() -> dict:
    _require_model()
    return json.loads((REAL / "reference.json").read_text())


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = Broker(tmp_path_factory.mktemp("real-broker")).start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def real_daemon(broker: Broker) -> Iterator[Daemon]:
    """The int4 variant, on HTTP and MQTT."""
    _require_model()
    instance = start_daemon("--model", str(MODEL), "--mqtt-url", broker.url, "--device-id", DEVICE)
    yield instance
    assert instance.stop() == 0


def run_on_engine(variant: str, work: Callable[[LocalEngine], Any]) -> Any:
    """Start an in-process engine on `variant`, await `work(engine)`, stop the engine."""
    _require_model()
    engine = LocalEngine(
        [LoadPlan("cpu", None, {}, resolve_model(MODEL, variant))], EngineSettings()
    )

    async def main() -> Any:
        await engine.start()
        try:
            return await work(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())
