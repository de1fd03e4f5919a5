"""Pulls and removals the running daemon is asked for (Ollama's /api/pull and /api/delete):
the same `models pull` and `models remove` as the CLI, with the refusals as EngineError."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.engine.types import EngineError, ErrorCode
from agent.hardware.inventory import HardwareInventory
from agent.hardware.providers import Installed, rank
from agent.models import catalog
from agent.models.catalog import CatalogEntry, CatalogVariant
from agent.models.pull import PullError, PullProgress, pull
from agent.models.store import ModelStore, StoreError

_pulling: set[str] = set()  # catalog names being pulled: one pull of a model at a time


def catalog_entry(name: str) -> CatalogEntry:
    """The catalog entry `name` (or one of its Ollama tags, or NAME:latest) names."""
    for candidate in (name, name.removesuffix(":latest")):
        with contextlib.suppress(catalog.CatalogError):
            return catalog.find(candidate)
    entries = ", ".join(catalog.load_catalog())
    raise EngineError(
        ErrorCode.MODEL_NOT_FOUND,
        f"{name!r} is not in edge-agent's catalog (have: {entries})",
        param="model",
    )


def start_pull(
    name: str, provider: str, hardware: HardwareInventory, store: ModelStore
) -> AsyncIterator[PullProgress]:
    """Pull the variant the daemon would load here (as `models pull` picks it); an unknown
    name raises now, before any progress."""
    entry = catalog_entry(name)
    wanted: str | None = provider
    if provider == "auto":
        ranked = rank(hardware, Installed.probe(), {v.provider for v in entry.variants})
        wanted = next((c.variant_provider for c in ranked if c.accepted), None)
    return pull_events(entry, entry.variant(None, wanted), store)


async def pull_events(
    entry: CatalogEntry, variant: CatalogVariant, store: ModelStore
) -> AsyncIterator[PullProgress]:
    """`pull` from the hub in a thread (off the event loop), its progress as it comes; a
    failure raises EngineError after the lines before it."""
    if entry.name in _pulling:
        raise EngineError(ErrorCode.INVALID_REQUEST, f"{entry.name} is already being pulled")
    _pulling.add(entry.name)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[PullProgress | None] = asyncio.Queue()

    def report(line: PullProgress | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon is stopping
            loop.call_soon_threadsafe(lines.put_nowait, line)

    def run() -> None:
        try:
            pull(entry, variant, store, progress=report)
        finally:
            _pulling.discard(entry.name)  # before the end is reported: a re-pull may follow
            report(None)

    running = asyncio.ensure_future(asyncio.to_thread(run))
    while (line := await lines.get()) is not None:
        yield line
    try:
        await running
    except (PullError, StoreError, OSError) as exc:
        raise EngineError(ErrorCode.INVALID_REQUEST, str(exc), param="model") from None
    except Exception as exc:  # the hub's client: network and HTTP errors
        raise EngineError(ErrorCode.ENGINE_ERROR, f"pull failed: {exc}") from None


def remove(name: str, root: Path) -> None:
    """`models remove` of a pulled model, by its name or an Ollama tag of its entry."""
    store = ModelStore(root)
    installed = {m.name for m in store.installed()}
    if name not in installed:
        name = name.removesuffix(":latest")
    if name not in installed:
        with contextlib.suppress(EngineError):
            name = catalog_entry(name).name
    if name not in installed:
        have = ", ".join(sorted(installed)) or "none"
        message = f"No profile or pulled model {name!r} to delete (pulled: {have})"
        raise EngineError(ErrorCode.MODEL_NOT_FOUND, message, param="model")
    try:
        store.remove(name)
    except StoreError as exc:  # the active model
        raise EngineError(ErrorCode.INVALID_REQUEST, str(exc), param="model") from None
