"""Installed models: `models_dir/NAME/VERSION/` folders (a manifest.toml each) and the
`active` pointer, a symlink swapped with one rename so a reader never sees a half state."""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from agent.state.files import atomic_write

HASH_CHUNK = 1 << 20


class StoreError(ValueError):
    """The request cannot be carried out; the message says why and what exists."""


@dataclass(frozen=True)
class InstalledModel:
    name: str
    version: str
    path: Path
    active: bool
    manifest: dict[str, Any]


def sha256_of(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointer = root / "active"

    def installed(self) -> list[InstalledModel]:
        active = self.active_path()
        found = []
        for manifest_path in sorted(self.root.glob("*/*/manifest.toml")):
            folder = manifest_path.parent
            if folder.parent.name.startswith("."):
                continue
            found.append(
                InstalledModel(
                    name=folder.parent.name,
                    version=folder.name,
                    path=folder,
                    active=active is not None and folder.resolve() == active,
                    manifest=tomllib.loads(manifest_path.read_text()),
                )
            )
        return found

    def find(self, name: str, version: str | None = None) -> InstalledModel:
        """The named model (its newest version unless `version` is given)."""
        matching = [m for m in self.installed() if m.name == name]
        if version is not None:
            matching = [m for m in matching if m.version == version]
        if not matching:
            have = ", ".join(sorted({m.name for m in self.installed()})) or "none"
            raise StoreError(f"{name!r} is not installed in {self.root} (installed: {have})")
        return max(matching, key=lambda m: m.path.stat().st_mtime)

    def active_path(self) -> Path | None:
        return self.pointer.resolve() if self.pointer.is_symlink() else None

    def install(self, staging: Path, name: str, version: str) -> Path:
        """Move a complete, verified folder into place with one rename."""
        target = self.root / name / version
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    def activate(self, name: str, version: str | None = None) -> InstalledModel:
        model = self.find(name, version)
        temporary = self.root / f".active.{os.getpid()}"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(model.path.relative_to(self.root))
        os.replace(temporary, self.pointer)
        return model

    def remove(self, name: str) -> list[Path]:
        models = [m for m in self.installed() if m.name == name]
        if not models:
            raise StoreError(f"{name!r} is not installed in {self.root}")
        if any(m.active for m in models):
            raise StoreError(f"{name!r} is the active model: activate another one first")
        for model in models:
            shutil.rmtree(model.path)
        shutil.rmtree(self.root / name, ignore_errors=True)
        return [m.path for m in models]

    def verify(self, name: str, version: str | None = None) -> list[str]:
        """Re-hash every file the manifest lists; the problems found (none: intact)."""
        model = self.find(name, version)
        problems = []
        for entry in model.manifest.get("files", []):
            path = model.path / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing")
            elif path.stat().st_size != entry["size"]:
                size = path.stat().st_size
                problems.append(f"{entry['path']}: {size} bytes, not {entry['size']}")
            elif sha256_of(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the recorded one")
        if not model.manifest.get("files"):
            problems.append("the manifest lists no files to check")
        return problems


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write(folder / "manifest.toml", tomli_w.dumps(manifest).encode())
