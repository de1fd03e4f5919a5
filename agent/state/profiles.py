"""Profiles created at run time (Modelfile import, Ollama `/api/create`), kept in the
state directory as one JSON file so they survive restarts. The CLI and the daemon share
the file; the daemon re-reads it when it changes."""

from __future__ import annotations

import json
from pathlib import Path

from agent.settings import Profile
from agent.state.files import atomic_write


class ProfileStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "profiles.json"
        self._seen: int | None = None
        self._profiles: dict[str, Profile] = {}

    def all(self) -> dict[str, Profile]:
        """The stored profiles, re-read if another process changed the file."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp != self._seen:
            self._profiles = self._read() if stamp is not None else {}
            self._seen = stamp
        return dict(self._profiles)

    def save(self, name: str, profile: Profile) -> None:
        profiles = self.all()
        profiles[name] = profile
        self._write(profiles)

    def remove(self, name: str) -> bool:
        profiles = self.all()
        if profiles.pop(name, None) is None:
            return False
        self._write(profiles)
        return True

    def _read(self) -> dict[str, Profile]:
        raw = json.loads(self.path.read_text())
        return {name: Profile.model_validate(fields) for name, fields in raw.items()}

    def _write(self, profiles: dict[str, Profile]) -> None:
        document = {n: p.model_dump(exclude_defaults=True) for n, p in sorted(profiles.items())}
        atomic_write(self.path, (json.dumps(document, indent=2) + "\n").encode())
        self._profiles, self._seen = profiles, self.path.stat().st_mtime_ns
