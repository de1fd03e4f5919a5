"""HTTP API keys: `Authorization: Bearer KEY`, compared in constant time against every key."""

from __future__ import annotations

import hmac
from pathlib import Path


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        """Blank keys are no keys: `[""]` must not count as authentication being on."""
        self._keys = [k.strip().encode() for k in keys if k.strip()]

    @classmethod
    def load(cls, keys: list[str], key_file: Path | None) -> ApiKeys:
        """Keys from the setting plus one per line of `key_file` (# comments allowed)."""
        found = list(keys)
        if key_file is not None:
            lines = (line.strip() for line in key_file.read_text().splitlines())
            found += [line for line in lines if line and not line.startswith("#")]
        return cls(found)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def allows(self, authorization: str | None) -> bool:
        """Whether the Authorization header carries one of the keys. Every key is compared,
        whatever matched, so the time taken says nothing about which part was right."""
        scheme, _, given = (authorization or "").partition(" ")
        candidate = given.strip().encode() if scheme.lower() == "bearer" else b""
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched
