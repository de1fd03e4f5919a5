"""A GGUF file's header read without the build tools: metadata and tensor types.

`edge-agent models import` checks the architecture and the quantization types here, in
the daemon's own environment, so an unsupported file is refused in a second with a clear
message instead of after torch has loaded. Format: github.com/ggml-org/ggml docs/gguf.md.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
# ggml_type ids (ggml.h) -> names, as llama.cpp and `gguf` print them.
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
# Value types of metadata entries: struct format per scalar type; 8 string, 9 array.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
# Arrays longer than this (the vocabulary, merges) are skipped, not kept: only their length.
_KEEP_ARRAY = 64


class GGUFError(ValueError):
    """Not a GGUF file, or one this reader cannot parse; the message says which."""


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensor_types: Counter[str] = field(default_factory=Counter)  # type -> number of tensors

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str | None:
        name = self.metadata.get("general.name")
        return str(name) if name else None

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return str(template) if template else None

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    @property
    def file_type(self) -> str:
        """The quantization the file is known by (its most common non-float tensor type)."""
        counted = [(n, t) for t, n in self.tensor_types.items()]
        quantized = [(n, t) for n, t in counted if t not in ("F32", "F16", "BF16")]
        return max(quantized or counted)[1]


def read_gguf(path: Path) -> GGUFInfo:
    """The header of `path`: every metadata entry (long arrays as their length) and the
    type of every tensor."""
    try:
        with path.open("rb") as file:
            return _read(file, path)
    except struct.error:
        raise GGUFError(f"{path} ends inside its GGUF header: truncated or not GGUF") from None


def _read(file: BinaryIO, path: Path) -> GGUFInfo:
    if file.read(4) != MAGIC:
        raise GGUFError(f"{path} is not a GGUF file (no GGUF magic number)")
    version = _unpack(file, "<I")
    if version not in (2, 3):
        raise GGUFError(f"{path} is GGUF version {version}; versions 2 and 3 are supported")
    tensor_count, kv_count = _unpack(file, "<Q"), _unpack(file, "<Q")
    metadata = {}
    for _ in range(kv_count):
        key = _string(file)
        metadata[key] = _value(file, _unpack(file, "<I"))
    types: Counter[str] = Counter()
    for _ in range(tensor_count):
        _string(file)  # name
        dims = _unpack(file, "<I")
        file.seek(8 * dims, 1)
        kind = _unpack(file, "<I")
        file.seek(8, 1)  # offset
        types[TENSOR_TYPES.get(kind, f"type {kind}")] += 1
    return GGUFInfo(path, version, metadata, types)


def _unpack(file: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    return struct.unpack(fmt, file.read(size))[0]


def _string(file: BinaryIO) -> str:
    return file.read(_unpack(file, "<Q")).decode("utf-8", errors="replace")


def _value(file: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        return _unpack(file, _SCALARS[kind])
    if kind == _STRING:
        return _string(file)
    if kind != _ARRAY:
        raise GGUFError(f"unknown GGUF metadata value type {kind}")
    item_kind, count = _unpack(file, "<I"), _unpack(file, "<Q")
    if count <= _KEEP_ARRAY:
        return [_value(file, item_kind) for _ in range(count)]
    if item_kind in _SCALARS:
        file.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
    else:
        for _ in range(count):
            _value(file, item_kind)
    return f"<array of {count}>"
