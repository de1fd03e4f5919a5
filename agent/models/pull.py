"""`edge-agent models pull`: fetch a catalog model's variant, verify every file, install it.

From the Hugging Face hub (huggingface-hub: resumable downloads, the revision pinned to
the commit it resolved to, the token from $HF_TOKEN or a file), or from a local folder
(`--from`, e.g. a USB stick on an offline gateway). Files are hashed against the
catalog's pinned sha256 where it has one, else against the hub's own LFS hash; a file
that does not match is deleted and the pull fails. The result is installed with one
rename into `models_dir/NAME/VERSION/`, with a manifest that `verify` re-checks.
`progress` takes Ollama's /api/pull lines (agent/models/requested.py runs the daemon's).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from agent.models.catalog import CatalogEntry, CatalogVariant
from agent.models.store import ModelStore, sha256_of, write_manifest

MIB = 1 << 20
DISK_MARGIN = 1.05  # room for the hub's temporary files
PROGRESS_INTERVAL_S = 1.0  # how often the download's bytes on disk are reported


class PullError(RuntimeError):
    """The pull stopped; the message says why and what to do."""


class ManifestFile(TypedDict):
    """One verified file, as the manifest lists it for `verify`."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PullProgress:
    """One of Ollama's /api/pull lines: a step, or the download's bytes so far."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


Report = Callable[[PullProgress], None]


@dataclass(frozen=True)
class Pulled:
    path: Path
    version: str
    files: int
    bytes: int


def pull(
    entry: CatalogEntry,
    variant: CatalogVariant,
    store: ModelStore,
    *,
    source: Path | None = None,
    token: str | None = None,
    progress: Report | None = None,
) -> Pulled:
    if entry.manifest.get("kind") == "embedding":  # refused before anything is downloaded
        raise PullError(
            f"{entry.name} is a sentence-embedding model, and pull installs chat models so "
            f"far: put {entry.manifest.get('hf_id', entry.name)}'s tokenizer.json, modules.json, "
            "1_Pooling/ and onnx/model.onnx in a folder and set embedding_model to it"
        )
    staging = store.root / ".partial" / f"{entry.name}-{variant.name}"
    staging.mkdir(parents=True, exist_ok=True)  # kept between attempts: downloads resume
    if source is not None:
        folder, version, expected, origin = _from_folder(variant, source, store, staging)
    else:
        folder, version, expected, origin = _from_hub(
            entry, variant, store, staging, token, progress
        )
    report = progress or (lambda line: None)
    report(PullProgress("verifying sha256 digest"))
    files = _verify(staging, folder, expected, show=progress is None)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub client's bookkeeping
    report(PullProgress("writing manifest"))
    write_manifest(staging, _manifest(entry, variant, folder, origin, files))
    path = store.install(staging, entry.name, version)
    report(PullProgress("success"))
    return Pulled(path, version, len(files), sum(f["size"] for f in files))


def _check_disk(store: ModelStore, needed_bytes: int) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.root).free
    if needed_bytes * DISK_MARGIN > free:
        raise PullError(
            f"not enough disk space in {store.root}: the variant needs "
            f"{needed_bytes / MIB:.0f} MiB, {free / MIB:.0f} MiB are free"
        )


def _from_hub(
    entry: CatalogEntry,
    variant: CatalogVariant,
    store: ModelStore,
    staging: Path,
    token: str | None,
    progress: Report | None = None,
) -> tuple[str, str, dict[str, str | None], dict[str, str]]:
    if variant.repo is None:
        raise PullError(
            f"{entry.name} {variant.name} has no prebuilt ONNX build on the hub: build it with "
            f"`edge-agent models convert {variant.convert_from} --out DIR`, then pull --from DIR"
        )
    from huggingface_hub import HfApi, snapshot_download  # imported late: only pulls need it

    _check_disk(store, variant.download_mb * MIB)
    if progress is not None:
        progress(PullProgress("pulling manifest"))
    api = HfApi(token=token)
    info = api.model_info(variant.repo, revision=variant.revision, files_metadata=True)
    prefix = variant.folder.rstrip("/") + "/"
    siblings = [s for s in info.siblings or () if s.rfilename.startswith(prefix)]
    if not siblings:
        raise PullError(f"{variant.repo}@{info.sha} has no folder {variant.folder!r}")
    pinned = {f.path: f.sha256 for f in variant.files}
    expected = {
        s.rfilename: pinned.get(s.rfilename) or (s.lfs.sha256 if s.lfs else None) for s in siblings
    }
    total = sum(s.size or 0 for s in siblings)
    with _watching(staging, expected, total, progress):
        snapshot_download(
            variant.repo,
            revision=info.sha,  # the commit the revision resolved to: every file from one commit
            allow_patterns=[prefix + "*"],
            local_dir=staging,
            token=token,
        )
    origin = {"repo": variant.repo, "revision": variant.revision, "commit": info.sha or ""}
    return variant.folder, (info.sha or "unknown")[:12], expected, origin


@contextlib.contextmanager
def _watching(
    staging: Path, expected: dict[str, str | None], total: int, progress: Report | None
) -> Iterator[None]:
    """Report the bytes under `staging` (finished files and the hub's partial ones) every
    PROGRESS_INTERVAL_S while the download runs, then the whole once it is done."""
    if progress is None:
        yield
        return
    listing = "".join(f"{path} {sha}\n" for path, sha in sorted(expected.items()))
    digest = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()  # names the file set
    status = f"pulling {digest[7:19]}"
    done = 0

    def measure() -> None:
        nonlocal done
        found = 0
        for path in staging.rglob("*"):
            if path.suffix not in (".lock", ".metadata"):
                with contextlib.suppress(OSError):  # moved from partial to final meanwhile
                    found += path.stat().st_size if path.is_file() else 0
        done = max(done, min(found, total))  # never backwards
        progress(PullProgress(status, digest, total, done))

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(PROGRESS_INTERVAL_S):
            measure()

    measure()
    poller = threading.Thread(target=poll, name="pull-progress", daemon=True)
    poller.start()
    try:
        yield
    finally:
        stop.set()
        poller.join()
    progress(PullProgress(status, digest, total, total))


def _from_folder(
    variant: CatalogVariant, source: Path, store: ModelStore, staging: Path
) -> tuple[str, str, dict[str, str | None], dict[str, str]]:
    if not (source / "genai_config.json").is_file():
        raise PullError(f"{source} is not an onnxruntime-genai model folder (no genai_config.json)")
    sources = [p for p in sorted(source.rglob("*")) if p.is_file()]
    _check_disk(store, sum(p.stat().st_size for p in sources))
    folder = variant.name
    pinned = {Path(f.path).name: f.sha256 for f in variant.files}
    expected: dict[str, str | None] = {}
    for path in sources:
        relative = path.relative_to(source)
        target = staging / folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        expected[f"{folder}/{relative}"] = pinned.get(path.name)
    version = "local-" + sha256_of(source / "genai_config.json")[:8]
    return folder, version, expected, {"path": str(source.resolve())}


def _verify(
    staging: Path, folder: str, expected: dict[str, str | None], *, show: bool = True
) -> list[ManifestFile]:
    """Hash every file of the variant; a mismatch deletes the file and stops the pull.
    `show`: a progress bar on the terminal (the CLI), not in the daemon's log."""
    paths = sorted(p for p in (staging / folder).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in paths)
    files: list[ManifestFile] = []
    columns = (TextColumn("verifying"), BarColumn(), DownloadColumn())
    with Progress(*columns, transient=True, disable=not show) as progress:
        task = progress.add_task("verify", total=total)
        for path in paths:
            relative = path.relative_to(staging).as_posix()
            digest = sha256_of(path, lambda n: progress.advance(task, n))
            wanted = expected.get(relative)
            if wanted is not None and digest != wanted:
                path.unlink()
                raise PullError(
                    f"{relative}: sha256 {digest} is not the expected {wanted}; the file was "
                    "deleted, pull again"
                )
            files.append({"path": relative, "size": path.stat().st_size, "sha256": digest})
    if not any(f["path"].endswith("genai_config.json") for f in files):
        raise PullError(f"the variant folder {folder!r} holds no genai_config.json")
    return files


def _manifest(
    entry: CatalogEntry,
    variant: CatalogVariant,
    folder: str,
    origin: dict[str, str],
    files: list[ManifestFile],
) -> dict[str, Any]:
    keep = ("name", "description", "hf_id", "ollama_tags", "family", "parameter_size")
    manifest: dict[str, Any] = {k: entry.manifest[k] for k in keep if k in entry.manifest}
    manifest["context_length"] = entry.context_length
    manifest["source"] = origin
    if "tool_calls" in entry.manifest:
        manifest["tool_calls"] = entry.manifest["tool_calls"]
    manifest["variants"] = [
        {
            "name": variant.name,
            "provider": variant.provider,
            "precision": variant.precision,
            "path": folder,
            "ram_mb": variant.ram_mb,
        }
    ]
    manifest["files"] = files
    return manifest
