"""`cmd/update_model` and `cmd/rollback`: a remote model update in steps, each of which can
fail on its own without touching the model that serves (download, checksum, memory, load,
smoke), and a way back to the version before.

Files are fetched into `models_dir/.partial/update-NAME-VERSION/`, which survives a
restart: a download cut by a crash continues with HTTP Range requests when the command is
delivered again. Every file's sha256 is checked, the memory need is compared with what is
available, the model is loaded next to the serving one and must generate a few tokens,
then requests move to it and the `active` pointer is swapped (as `models activate` does).
The versions made active are recorded (`models_dir/.history.json`) for `rollback`; older
versions beyond `keep_versions` are removed, never the active or the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import structlog

from agent.engine.local import LocalEngine
from agent.engine.reply import ReplyReader
from agent.engine.types import ChatRequest, EngineError, ErrorCode, Message, SamplingParams
from agent.models.fetch import (
    TIMEOUT,
    FetchError,
    Report,
    assemble,
    copy_all,
    download_all,
    fetch_json,
    from_hub,
    verify,
)
from agent.models.info import ModelDirError, resolve_model
from agent.models.memory import ModelDoesNotFit, fitting_length
from agent.models.store import ModelStore
from agent.mqtt.bridge import MqttBridge
from agent.protocol.commands import CommandFailed
from agent.settings import Settings
from agent.state.files import atomic_write

log = structlog.get_logger(__name__)
Check = Callable[[LocalEngine], Awaitable[None]]
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
HISTORY_KEPT = 16
IDLE_POLL_S = 0.02


class Updatable(Protocol):
    """What an update needs of the service."""

    settings: Settings
    model_path: Path  # the model directory serving now (resolved)

    @property
    def engine(self) -> LocalEngine: ...

    async def switch_model(self, model: Path, check: Check | None = None) -> None: ...


class SmokeFailed(RuntimeError):
    """The new model loaded but could not generate."""


@dataclass(frozen=True)
class Update:
    name: str
    version: str
    source: dict[str, str]
    files: dict[str, str] | None  # path -> sha256; None: from manifest_url
    manifest_url: str | None
    activate: bool
    wait_s: float
    token: str | None


def parse_update(arguments: dict[str, Any], default_wait_s: float) -> Update:
    def invalid(message: str) -> EngineError:
        return EngineError(ErrorCode.INVALID_REQUEST, message)

    name, version = _safe_name(arguments, "name"), _safe_name(arguments, "version")
    source = arguments.get("source")
    kinds = ("url", "hf_repo", "path")
    if not isinstance(source, dict) or sum(k in source for k in kinds) != 1:
        raise invalid("source: one of {url}, {hf_repo, revision} or {path}")
    if not all(isinstance(v, str) for v in source.values()):
        raise invalid("source: string values")
    if "url" in source and not source["url"].startswith(("http://", "https://")):
        raise invalid("source.url: an http(s) URL")
    files, manifest_url = arguments.get("sha256"), arguments.get("manifest_url")
    if (files is None) == (manifest_url is None):
        raise invalid("give either sha256 ({file: hex}) or manifest_url")
    if files is not None:
        files = _checked_files(files)
    elif not isinstance(manifest_url, str) or not manifest_url.startswith(("http://", "https://")):
        raise invalid("manifest_url: an http(s) URL")
    wait_s = arguments.get("wait_s", default_wait_s)
    if isinstance(wait_s, bool) or not isinstance(wait_s, int | float) or wait_s < 0:
        raise invalid("wait_s: a number of seconds >= 0")
    token = arguments.get("token") or os.environ.get("HF_TOKEN")
    return Update(
        name, version, source, files, manifest_url, arguments.get("activate", True) is not False,
        float(wait_s), token,
    )  # fmt: skip


def _safe_name(arguments: dict[str, Any], field: str) -> str:
    """A name that is also a folder name under models_dir."""
    value = arguments.get(field)
    if not isinstance(value, str) or not SAFE_NAME.match(value):
        message = f"{field}: letters, digits, '.', '_' or '-' (at most 64)"
        raise EngineError(ErrorCode.INVALID_REQUEST, message)
    return value


def _checked_files(files: object) -> dict[str, str]:
    """File list from `sha256` or a manifest: relative paths, lowercase hex digests."""
    if isinstance(files, list):  # a manifest may list [{"path", "sha256"}, ...]
        files = {e.get("path"): e.get("sha256") for e in files if isinstance(e, dict)}
    if not isinstance(files, dict) or not files:
        raise EngineError(ErrorCode.INVALID_REQUEST, "sha256: {file: hex digest}, not empty")
    checked: dict[str, str] = {}
    for path, digest in files.items():
        parts = str(path).split("/")
        if not isinstance(path, str) or any(
            p in ("", ".", "..") or p.startswith(".") for p in parts
        ):
            raise EngineError(ErrorCode.INVALID_REQUEST, f"sha256: bad file name {path!r}")
        if not isinstance(digest, str) or not SHA256.match(digest.lower()):
            raise EngineError(ErrorCode.INVALID_REQUEST, f"sha256: {path}: not a sha256 digest")
        checked[path] = digest.lower()
    if not any(p.split("/")[-1] == "genai_config.json" for p in checked):
        raise EngineError(ErrorCode.INVALID_REQUEST, "the files hold no genai_config.json")
    return checked


class ModelUpdates:
    def __init__(
        self, daemon: Updatable, memory: Callable[[], int | None], mqtt: MqttBridge | None
    ) -> None:
        self.daemon = daemon
        self.memory = memory  # bytes a model may take now
        self.mqtt = mqtt
        self.store = ModelStore(daemon.settings.models_root)
        self.history_path = self.store.root / ".history.json"
        self._lock = asyncio.Lock()  # one update or rollback at a time

    # ---- cmd/update_model ----------------------------------------------------------------

    async def update(self, arguments: dict[str, Any], progress: Report) -> dict[str, Any]:
        update = parse_update(arguments, self.daemon.settings.drain_timeout_s)
        async with self._lock:
            previous = self._serving()
            done = {"model": update.name, "version": update.version, "previous": previous}
            target = (self.store.root / update.name / update.version).resolve()
            if target == self.daemon.model_path:  # already done: no second download
                return {**done, "previous": self._previous()}
            with _State(self.mqtt):
                path = await self._prepare(update, progress, done)
                if not update.activate:
                    return {**done, "activated": False}
                await self._wait_idle(update.wait_s)
                await self._switch(path, done, remove_on_failure=True)
                self.store.activate(update.name, update.version)
                self._record(previous, self._serving())
                removed = self._collect(update.name)
            return {**done, "removed": removed}

    async def _prepare(self, update: Update, progress: Report, done: dict[str, Any]) -> Path:
        """Fetch, verify and size the new model; installed (not active) when it passes."""
        staging = self.store.root / ".partial" / f"update-{update.name}-{update.version}"
        try:
            files = await self._fetch(update, staging, progress)
        except (FetchError, httpx.HTTPError, OSError, ValueError, EngineError) as exc:
            raise CommandFailed("download", str(exc), done) from exc
        progress({"step": "checksum"})
        wrong = await asyncio.to_thread(verify, staging, files)
        if wrong:
            raise CommandFailed("checksum", wrong, done)
        try:
            folder = assemble(staging, update.name, update.version, update.source, files)
        except (OSError, ValueError) as exc:  # not a model folder: it could never load
            raise CommandFailed("load", str(exc), done) from exc
        try:
            info = resolve_model(folder)
            engine = self.daemon.settings.engine
            wanted = min(info.context_length, engine.max_context)
            fitting_length(info, wanted, engine.kv_caches, self.memory(), engine.fit_context)
        except ModelDoesNotFit as exc:
            shutil.rmtree(folder)
            raise CommandFailed("memory", str(exc), done) from exc
        except (ModelDirError, OSError, KeyError, ValueError) as exc:
            shutil.rmtree(folder)
            raise CommandFailed("load", str(exc), done) from exc
        return self.store.install(folder, update.name, update.version)

    async def _fetch(self, update: Update, staging: Path, progress: Report) -> dict[str, str]:
        staging.mkdir(parents=True, exist_ok=True)
        source = update.source
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=True) as client:
            files = update.files
            if files is None:
                assert update.manifest_url is not None
                document = await fetch_json(client, update.manifest_url)
                files = _checked_files(
                    document.get("files") if isinstance(document, dict) else None
                )
            if "url" in source:
                await download_all(client, source["url"].rstrip("/"), files, staging, progress)
            elif "path" in source:
                await asyncio.to_thread(copy_all, Path(source["path"]), files, staging)
            else:
                await asyncio.to_thread(from_hub, source, files, staging, update.token)
        return files

    async def _wait_idle(self, limit_s: float) -> None:
        """Let running requests finish first, up to a limit; after it they finish on the old
        model anyway (the switch never cuts them)."""
        deadline = time.monotonic() + limit_s
        while not self.daemon.engine.idle and time.monotonic() < deadline:
            await asyncio.sleep(IDLE_POLL_S)

    async def _switch(self, path: Path, done: dict[str, Any], remove_on_failure: bool) -> None:
        try:
            await self.daemon.switch_model(path, _smoke)
        except SmokeFailed as exc:
            failed = CommandFailed("smoke", str(exc), done)
        except Exception as exc:  # whatever the loader raised: the old model serves on
            failed = CommandFailed("load", str(exc), done)
        else:
            return
        if remove_on_failure:
            shutil.rmtree(path, ignore_errors=True)
        raise failed

    # ---- the model pointer -------------------------------------------------------------------

    async def watch(self, recheck: asyncio.Event, draining: Callable[[], bool]) -> None:
        """Switch models when the model pointer (`models_dir/active`) is swapped by hand
        (`models activate`); an update or a rollback has switched already when it moves it."""
        pointer = self.daemon.settings.model_dir
        seen = pointer.resolve()
        interval = self.daemon.settings.models.model_watch_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recheck.wait(), interval)
            recheck.clear()
            target = pointer.resolve()
            if target == seen or draining():
                continue
            seen = target  # switched, or refused: do not retry the same target in a loop
            if target == self.daemon.model_path or self._lock.locked():
                continue
            try:
                await self.daemon.switch_model(pointer)
            except Exception as exc:  # a bad model must not take the serving one down
                log.error("model switch failed; the old model keeps serving", error=str(exc))

    # ---- cmd/rollback ----------------------------------------------------------------------

    async def rollback(self) -> dict[str, Any]:
        async with self._lock:
            current = self._serving()
            history = [e for e in self._history() if e["path"] != str(self.daemon.model_path)]
            while history and not Path(history[-1]["path"]).is_dir():
                history.pop()  # removed from disk since
            done = {"model": current["model"], "version": current["version"], "previous": None}
            if not history:
                raise CommandFailed("rollback", "no previous version on disk", done)
            back = history[-1]
            done = {"model": back["model"], "version": back["version"], "previous": current}
            with _State(self.mqtt):
                await self._switch(Path(back["path"]), done, remove_on_failure=False)
            path = Path(back["path"])
            if path.parent.parent == self.store.root.resolve():
                self.store.activate(path.parent.name, path.name)
            else:  # the bundled model (or one given by path): no pointer serves it
                self.store.pointer.unlink(missing_ok=True)
            self._save(history)
            return done

    # ---- versions kept -----------------------------------------------------------------------

    def _serving(self) -> dict[str, Any]:
        info = self.daemon.engine.info
        return {
            "model": info.name,
            "version": info.manifest.get("version"),
            "path": str(self.daemon.model_path),
        }

    def _history(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.history_path.read_text())
        except (OSError, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)]

    def _save(self, history: list[dict[str, Any]]) -> None:
        atomic_write(self.history_path, json.dumps(history[-HISTORY_KEPT:]).encode())

    def _previous(self) -> dict[str, Any] | None:
        history = self._history()
        return history[-2] if len(history) > 1 else None

    def _record(self, previous: dict[str, Any], current: dict[str, Any]) -> None:
        history = self._history()
        if not history or history[-1]["path"] != previous["path"]:
            history.append(previous)
        self._save([*history, current])

    def _collect(self, name: str) -> list[str]:
        """Remove versions of `name` beyond the newest `keep_versions`, never the active
        or the previous one."""
        keep = self.daemon.settings.models.keep_versions
        protected = {str(self.daemon.model_path)}
        if (previous := self._previous()) is not None:
            protected.add(previous["path"])
        folders = [m.path for m in self.store.installed() if m.name == name]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        for folder in folders[keep:]:
            if str(folder.resolve()) not in protected:
                shutil.rmtree(folder)
                removed.append(folder.name)
        if removed:
            log.info("old model versions removed", model=name, versions=removed)
        return removed


class _State:
    """The retained MQTT status says `updating` while an update runs; a switch sets it
    `ready`, a failure sets back what it was."""

    def __init__(self, mqtt: MqttBridge | None) -> None:
        self.mqtt = mqtt
        self.before = mqtt.state if mqtt is not None else None

    def __enter__(self) -> None:
        if self.mqtt is not None:
            self.mqtt.set_state("updating")

    def __exit__(self, *exc: object) -> None:
        if self.mqtt is not None and self.mqtt.state == "updating" and self.before:
            self.mqtt.set_state(self.before)


async def _smoke(engine: LocalEngine) -> None:
    """A few greedy tokens from the new model before any request goes to it."""
    request = ChatRequest(
        model=None,
        messages=(Message("user", "Hello"),),
        sampling=SamplingParams(max_tokens=4, temperature=0.0),
    )
    try:
        reply = await ReplyReader((await engine.submit(request)).chunks).read()
    except EngineError as exc:
        raise SmokeFailed(exc.message) from exc
    if reply.error:
        raise SmokeFailed(reply.error)
    if reply.usage.completion_tokens < 1:
        raise SmokeFailed("the model generated no token")
