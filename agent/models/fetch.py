"""Fetching a model version for a remote update (agent/fleet/update.py): resumable HTTP
downloads (a file grows in `NAME.part` and is renamed when complete, so a download cut by
a crash or a restart continues with an HTTP Range request from the bytes already on disk),
a local folder or the Hugging Face hub; then every file's sha256, and the verified files
as a model directory with a manifest."""

from __future__ import annotations

import json
import os
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from agent.models.info import variant_providers
from agent.models.store import sha256_of, write_manifest
from agent.protocol.commands import redacted

Report = Callable[[dict[str, Any]], None]  # progress: {step, bytes, total}
CHUNK = 64 * 1024
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def shown(url: str) -> str:
    """A URL as errors and logs show it: without user:password@ or a (signed) query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class FetchError(RuntimeError):
    """The download failed; the message names the URL and why."""


async def download(
    client: httpx.AsyncClient, url: str, target: Path, advance: Callable[[int, int], None]
) -> None:
    """Fetch `url` into `target` (nothing to do if it exists). `advance(bytes, total)` is
    called after every chunk with this file's figures, resumed bytes included."""
    if target.is_file():
        return
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416:  # the part is already whole
                os.replace(partial, target)
                return
            if response.status_code not in (200, 206):
                raise FetchError(f"{shown(url)}: HTTP {response.status_code}")
            if response.status_code == 200:
                have = 0  # the server ignored the Range: start over
            length = int(response.headers.get("Content-Length", 0))
            total = have + length if length else 0
            with partial.open("ab" if have else "wb") as file:
                async for chunk in response.aiter_bytes(CHUNK):
                    file.write(chunk)
                    file.flush()  # on disk for the next attempt, even after a kill -9
                    have += len(chunk)
                    advance(have, total)
    except httpx.HTTPError as exc:
        raise FetchError(f"{shown(url)}: {exc}") from exc
    if total and have != total:
        raise FetchError(f"{shown(url)}: the connection ended at {have} of {total} bytes")
    os.replace(partial, target)


async def fetch_json(client: httpx.AsyncClient, url: str) -> Any:
    try:
        response = await client.get(url)
        response.raise_for_status()
        return json.loads(response.content)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        raise FetchError(f"{shown(url)}: {exc}") from exc


async def download_all(
    client: httpx.AsyncClient, base: str, files: dict[str, str], staging: Path, progress: Report
) -> None:
    sizes = {}
    for path in files:
        url = f"{base}/{quote(path)}"
        try:
            head = await client.head(url)
        except httpx.HTTPError as exc:  # unreachable, refused, timed out: the download step
            raise FetchError(f"{shown(url)}: {exc}") from exc
        sizes[path] = int(head.headers.get("Content-Length", 0)) if head.is_success else 0
    total = sum(sizes.values()) or None
    finished = 0
    for path in files:
        target = staging / path
        if not target.is_file():

            def advance(have: int, _file_total: int, before: int = finished) -> None:
                progress({"step": "download", "bytes": before + have, "total": total})

            await download(client, f"{base}/{quote(path)}", target, advance)
        finished += sizes[path] or target.stat().st_size


def copy_all(source: Path, files: dict[str, str], staging: Path) -> None:
    for path in files:
        target = staging / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, target)


def from_hub(
    source: dict[str, str], files: dict[str, str], staging: Path, token: str | None
) -> None:
    """The Hugging Face hub (huggingface-hub resumes its own downloads)."""
    from huggingface_hub import snapshot_download  # imported late: only hub updates need it

    snapshot_download(
        source["hf_repo"],
        revision=source.get("revision"),
        allow_patterns=list(files),
        local_dir=staging,
        token=token,
    )
    shutil.rmtree(staging / ".cache", ignore_errors=True)


def verify(staging: Path, files: dict[str, str]) -> str | None:
    """Hash every file; the wrong ones are deleted (fetched again next time)."""
    wrong = []
    for path, expected in files.items():
        target = staging / path
        if not target.is_file():
            wrong.append(f"{path}: missing")
        elif (digest := sha256_of(target)) != expected:
            target.unlink()
            wrong.append(f"{path}: sha256 {digest} is not the expected {expected}")
    return "; ".join(wrong) or None


def assemble(
    staging: Path, name: str, version: str, source: dict[str, str], files: dict[str, str]
) -> Path:
    """The verified files as a model directory with a manifest (name, version, files) that
    `models verify` re-checks. A plain onnxruntime-genai folder becomes its one variant."""
    folder = staging.with_name(f"install-{name}-{version}")
    shutil.rmtree(folder, ignore_errors=True)
    listed = [  # not the manifest itself: it is rewritten below, so its hash would not hold
        {"path": p, "size": (staging / p).stat().st_size, "sha256": d}
        for p, d in files.items()
        if p != "manifest.toml"
    ]
    if "manifest.toml" in files:
        os.replace(staging, folder)
        manifest = tomllib.loads((folder / "manifest.toml").read_text())
    else:
        folder.mkdir(parents=True)
        os.replace(staging, folder / "default")
        config = next(p for p in files if p.split("/")[-1] == "genai_config.json")
        where = "/".join(["default", *config.split("/")[:-1]])  # a hub repo's subfolder
        provider = next(iter(variant_providers(folder / where)))
        variant = {"name": "default", "provider": provider, "path": where}
        manifest = {"variants": [variant]}
        listed = [{**f, "path": f"default/{f['path']}"} for f in listed]
    manifest.update(name=name, version=version, files=listed)
    manifest["source"] = redacted(source)
    write_manifest(folder, manifest)
    return folder
