"""`edge-agent models pull`: fetch a catalog model's variant, verify every file, install it.

From the Hugging Face hub (huggingface-hub: resumable downloads, the revision pinned to
the commit it resolved to, the token from $HF_TOKEN or a file), or from a local folder
(`--from`, e.g. a USB stick on an offline gateway). Every file is checked: against the
catalog's pinned sha256 where it has one, else the hub's LFS sha256, else (a file the hub
keeps in git) its git blob id; a folder's files against its `sha256sums` or `manifest.toml`.
A file that does not match is deleted and the pull fails; a file with nothing to check it
against fails it too, unless `trust_unverified` (recorded in the manifest). The result is
installed with one rename into `models_dir/NAME/VERSION/`, with a manifest that `verify`
re-checks. Before anything is fetched, the files' sizes (the hub's listing, or the folder's
files) are checked against free disk and, for CPU variants, the memory needed to load them
against what this gateway can give (agent/models/fit.py): a variant that could not load is
refused, and the message names one that fits.
`progress` takes Ollama's /api/pull lines (agent/models/requested.py runs the daemon's).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from agent.hardware.inventory import detect
from agent.models import fit
from agent.models.catalog import CatalogEntry, CatalogVariant
from agent.models.store import HASH_CHUNK, ModelStore, sha256_of, write_manifest

MIB = 1 << 20
DISK_MARGIN = 1.05  # room for the hub's temporary files
PROGRESS_INTERVAL_S = 1.0  # how often the download's bytes on disk are reported
HASH_LISTS = ("sha256sums", "SHA256SUMS", "manifest.toml")  # a `--from` folder's own hashes
GIT_BLOB = "git-blob"


class PullError(RuntimeError):
    """The pull stopped; the message says why and what to do."""


class ManifestFile(TypedDict):
    """One verified file, as the manifest lists it for `verify`."""

    path: str
    size: int
    sha256: str
    verified: str  # how: catalog-sha256, lfs-sha256, git-blob, source-sha256 or unverified


@dataclass(frozen=True)
class Check:
    """What one file must hash to: `method` names the source, `digest` the value (a sha256,
    or for GIT_BLOB the sha1 of b"blob SIZE\\0" + content, the hub's id of a git-kept file)."""

    method: str
    digest: str


Expected = dict[str, Check | None]


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
    unverified: tuple[str, ...] = ()  # accepted with nothing to check them against


def pull(
    entry: CatalogEntry,
    variant: CatalogVariant,
    store: ModelStore,
    *,
    source: Path | None = None,
    token: str | None = None,
    progress: Report | None = None,
    trust_unverified: bool = False,
    hardware_root: Path = Path("/"),
) -> Pulled:
    """`hardware_root`: where the memory check reads /proc and /sys (a recorded tree in tests)."""
    if entry.manifest.get("kind") == "embedding":  # refused before anything is downloaded
        raise PullError(
            f"{entry.name} is a sentence-embedding model, and pull installs chat models so "
            f"far: put {entry.manifest.get('hf_id', entry.name)}'s tokenizer.json, modules.json, "
            "1_Pooling/ and onnx/model.onnx in a folder and set embedding_model to it"
        )
    staging = store.root / ".partial" / f"{entry.name}-{variant.name}"
    staging.mkdir(parents=True, exist_ok=True)  # kept between attempts: downloads resume
    if source is not None:
        folder, version, expected, origin = _from_folder(
            entry, variant, source, (store, hardware_root), staging, trust_unverified
        )
    else:
        folder, version, expected, origin = _from_hub(
            entry, variant, (store, hardware_root), staging, token, progress
        )
    report = progress or (lambda line: None)
    report(PullProgress("verifying sha256 digest"))
    files = _verify(staging, folder, expected, trust_unverified, show=progress is None)
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # the hub client's bookkeeping
    report(PullProgress("writing manifest"))
    if trust_unverified:
        origin["trust_unverified"] = True
    write_manifest(staging, _manifest(entry, variant, folder, origin, files))
    path = store.install(staging, entry.name, version)
    report(PullProgress("success"))
    unverified = tuple(f["path"] for f in files if f["verified"] == "unverified")
    return Pulled(path, version, len(files), sum(f["size"] for f in files), unverified)


Target = tuple[ModelStore, Path]  # where it is installed, and where the hardware is read


def _check_fit(
    entry: CatalogEntry, variant: CatalogVariant, place: Target, files_bytes: int | None
) -> None:
    """Disk, then memory, with the files' real sizes (None: the listing gave none)."""
    store, hardware_root = place
    wanted = fit.need(entry, variant, files_bytes)
    store.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(store.root).free
    if wanted.files_bytes * DISK_MARGIN > free:
        raise PullError(
            f"not enough disk space in {store.root}: the variant needs "
            f"{wanted.files_bytes / MIB:.0f} MiB ({wanted.source}), {free / MIB:.0f} MiB are free"
        )
    if reason := fit.refusal(entry, variant, wanted, detect(hardware_root)):
        raise PullError(reason)


def _from_hub(
    entry: CatalogEntry,
    variant: CatalogVariant,
    place: Target,
    staging: Path,
    token: str | None,
    progress: Report | None = None,
) -> tuple[str, str, Expected, dict[str, Any]]:
    if variant.repo is None:
        raise PullError(
            f"{entry.name} {variant.name} is not on the hub: {fit.how_to_get(entry, variant)}"
        )
    from huggingface_hub import HfApi, snapshot_download  # imported late: only pulls need it

    if progress is not None:
        progress(PullProgress("pulling manifest"))
    api = HfApi(token=token)
    info = api.model_info(variant.repo, revision=variant.revision, files_metadata=True)
    prefix = variant.folder.rstrip("/") + "/"
    siblings = [s for s in info.siblings or () if s.rfilename.startswith(prefix)]
    if not siblings:
        raise PullError(f"{variant.repo}@{info.sha} has no folder {variant.folder!r}")
    sizes = {s.rfilename: s.size for s in siblings if s.size is not None}
    listed = sum(sizes.values()) if len(sizes) == len(siblings) else None  # else: estimates
    if listed is not None:
        fit.save_listing(place[0].root, entry, variant, info.sha or "", sizes)
    _check_fit(entry, variant, place, listed)
    pinned = {f.path: f.sha256 for f in variant.files}
    expected: Expected = {}
    for s in siblings:
        if pin := pinned.get(s.rfilename):
            expected[s.rfilename] = Check("catalog-sha256", pin)
        elif s.lfs:
            expected[s.rfilename] = Check("lfs-sha256", s.lfs.sha256)
        else:  # kept in git: the hub names it by its blob id
            expected[s.rfilename] = Check(GIT_BLOB, s.blob_id) if s.blob_id else None
    for stale in (staging / variant.folder).rglob("*"):  # left by an attempt at another commit
        if stale.is_file() and stale.relative_to(staging).as_posix() not in expected:
            stale.unlink()
    total = sum(sizes.values())
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
    staging: Path, expected: Expected, total: int, progress: Report | None
) -> Iterator[None]:
    """Report the bytes under `staging` (finished files and the hub's partial ones) every
    PROGRESS_INTERVAL_S while the download runs, then the whole once it is done."""
    if progress is None:
        yield
        return
    listing = "".join(f"{path} {c and c.digest}\n" for path, c in sorted(expected.items()))
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
    entry: CatalogEntry,
    variant: CatalogVariant,
    source: Path,
    place: Target,
    staging: Path,
    trust: bool,
) -> tuple[str, str, Expected, dict[str, Any]]:
    """Copy the folder's files, each with its sha256 from the folder's hash list (else the
    catalog's pin); refused before copying when one has none, unless `trust`."""
    if not (source / "genai_config.json").is_file():
        raise PullError(f"{source} is not an onnxruntime-genai model folder (no genai_config.json)")
    listed, list_path = _hash_list(source)
    sources = [p for p in sorted(source.rglob("*")) if p.is_file() and p != list_path]
    _check_fit(entry, variant, place, sum(p.stat().st_size for p in sources))
    names = {p.relative_to(source).as_posix() for p in sources}
    if listed and (missing := sorted(set(listed) - names)):
        raise PullError(f"{', '.join(missing)}: listed in {list_path} but not in {source}")
    pinned = {Path(f.path).name: f.sha256 for f in variant.files if f.sha256}
    folder = variant.name
    expected: Expected = {}
    for path in sources:
        relative = path.relative_to(source).as_posix()
        if listed:
            if relative not in listed:
                raise PullError(f"{relative}: not in {list_path}, so it cannot be verified")
            expected[f"{folder}/{relative}"] = Check("source-sha256", listed[relative])
        elif path.name in pinned:
            expected[f"{folder}/{relative}"] = Check("catalog-sha256", pinned[path.name])
        else:
            expected[f"{folder}/{relative}"] = None
    if not trust and (unknown := [k for k, v in expected.items() if v is None]):
        raise PullError(
            f"{source} has no sha256sums or manifest.toml listing its files' sha256, and the "
            f"catalog pins none for {len(unknown)} of them ({', '.join(unknown[:3])}...): add "
            "one (`sha256sum genai_config.json model.onnx* tok* > sha256sums`, every file) or "
            "pass --trust-unverified"
        )
    shutil.rmtree(staging / folder, ignore_errors=True)  # nothing left from an earlier attempt
    for path in sources:
        target = staging / folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    version = "local-" + sha256_of(source / "genai_config.json")[:8]
    return folder, version, expected, {"path": str(source.resolve())}


def _hash_list(source: Path) -> tuple[dict[str, str], Path | None]:
    """The folder's own sha256 per relative path: `sha256sums` (sha256sum's output) or a
    manifest.toml with `files` (edge-agent's own, as `models verify` reads it)."""
    for name in HASH_LISTS:
        path = source / name
        if not path.is_file():
            continue
        if name == "manifest.toml":
            files = tomllib.loads(path.read_text()).get("files", [])
            listed = {f["path"]: f["sha256"] for f in files if "sha256" in f}
        else:
            lines = (line.split(maxsplit=1) for line in path.read_text().splitlines())
            listed = {
                words[1].lstrip("*").removeprefix("./"): words[0].lower()
                for words in lines
                if len(words) == 2
            }
        if listed:
            return listed, path
    return {}, None


def _digests(path: Path, advance: Callable[[int], None]) -> tuple[str, str]:
    """The file's sha256 and its git blob id, in one read."""
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())  # git's id, not for security
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            sha256.update(chunk)
            blob.update(chunk)
            advance(len(chunk))
    return sha256.hexdigest(), blob.hexdigest()


def _verify(
    staging: Path, folder: str, expected: Expected, trust: bool, *, show: bool = True
) -> list[ManifestFile]:
    """Hash every file of the variant; a mismatch deletes the file and stops the pull, and
    so does a file with nothing to check it against, unless `trust`.
    `show`: a progress bar on the terminal (the CLI), not in the daemon's log."""
    paths = sorted(p for p in (staging / folder).rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in paths)
    files: list[ManifestFile] = []
    columns = (TextColumn("verifying"), BarColumn(), DownloadColumn())
    with Progress(*columns, transient=True, disable=not show) as progress:
        task = progress.add_task("verify", total=total)
        for path in paths:
            relative = path.relative_to(staging).as_posix()
            sha256, blob = _digests(path, lambda n: progress.advance(task, n))
            check = expected.get(relative)
            if check is None and not trust:
                path.unlink()
                raise PullError(f"{relative}: no hash to check it against (the source lists none)")
            found, kind = (
                (blob, "git blob id") if check and check.method == GIT_BLOB else (sha256, "sha256")
            )
            if check is not None and found != check.digest:
                path.unlink()
                raise PullError(
                    f"{relative}: {kind} {found} is not the expected {check.digest}; the file "
                    "was deleted, pull again"
                )
            files.append({"path": relative, "size": path.stat().st_size, "sha256": sha256,
                          "verified": check.method if check else "unverified"})  # fmt: skip
    if not any(f["path"].endswith("genai_config.json") for f in files):
        raise PullError(f"the variant folder {folder!r} holds no genai_config.json")
    return files


def _manifest(
    entry: CatalogEntry,
    variant: CatalogVariant,
    folder: str,
    origin: dict[str, Any],
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
            "ram_mib_estimate": variant.ram_mib_estimate,
        }
    ]
    manifest["files"] = files
    return manifest
