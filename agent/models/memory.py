"""What a model needs resident before it is loaded: its weights plus the KV cache, which
onnxruntime-genai allocates up front for `max_length` tokens per batch slot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.models.info import ModelInfo

MIB = 1 << 20
MIN_CONTEXT = 512
CONTEXT_STEP = 256


@dataclass(frozen=True)
class MemoryNeed:
    weights_bytes: int
    kv_bytes: int
    max_length: int
    batch: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes

    def describe(self) -> str:
        return (
            f"{self.total_bytes / MIB:.0f} MiB (weights {self.weights_bytes / MIB:.0f} MiB + KV "
            f"cache {self.kv_bytes / MIB:.0f} MiB for {self.max_length} tokens x {self.batch} "
            "requests)"
        )


class ModelDoesNotFit(MemoryError):
    """Loading would exceed the memory available; the message says by how much."""


def weights_bytes(variant_path: Path) -> int:
    return sum(p.stat().st_size for p in variant_path.iterdir() if p.is_file())


def need(info: ModelInfo, max_length: int, batch: int) -> MemoryNeed:
    kv = info.kv_bytes_per_token * max_length * batch
    return MemoryNeed(weights_bytes(info.path), kv, max_length, batch)


def fitting_length(
    info: ModelInfo, max_length: int, batch: int, available: int | None, fit_context: bool
) -> int:
    """`max_length` if the model fits in `available` bytes; with `fit_context` the
    longest context that does (in steps of 256, at least 512); else ModelDoesNotFit."""
    wanted = need(info, max_length, batch)
    if available is None or wanted.total_bytes <= available:
        return max_length
    if fit_context:
        length = max_length - max_length % CONTEXT_STEP
        while length >= MIN_CONTEXT:
            if need(info, length, batch).total_bytes <= available:
                return length
            length -= CONTEXT_STEP
    advice = "lower max_context, max_batch or prefix_cache_entries" + (
        "" if fit_context else ", or set fit_context"
    )
    raise ModelDoesNotFit(
        f"{info.name} ({info.variant}) needs {wanted.describe()}, but only "
        f"{max(available, 0) / MIB:.0f} MiB are available after the memory reserve: {advice}"
    )
