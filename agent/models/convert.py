"""`edge-agent models convert`: the onnxruntime-genai model builder with edge-agent's
defaults, and a manifest next to the result so the daemon can serve it.

The builder needs torch, transformers and onnx (`pip install 'edge-agent[build-models]'`,
or `make model` for .venv-build); it never runs inside the daemon. `prune_lm_head` is off by
default: onnxruntime-genai 0.18's CPU engine cannot run pruned models (see README).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.models.store import write_manifest

PROVIDERS = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}


class ConvertError(RuntimeError):
    """The builder is missing or failed; the message says which."""


@dataclass(frozen=True)
class ConvertPlan:
    source: str  # a local Hugging Face folder or a hub id
    out: Path
    precision: str = "int4"
    provider: str = "cpu"
    prune_lm_head: bool = False
    python: str = sys.executable
    cache: Path | None = None
    # 32 matches Microsoft's published CPU builds; 128 decodes ~1.4x faster on CPU at some
    # accuracy cost (scripts/bench/RESULTS.md).
    block_size: int = 32

    @property
    def variant(self) -> str:
        return f"{self.provider}-{self.precision}"

    def command(self) -> list[str]:
        # The builder's current names: its `int4_`-prefixed aliases are silently ignored.
        options = [f"block_size={self.block_size}"]
        if self.provider == "cpu" and self.precision == "int4":
            options.append("accuracy_level=4")
        if self.prune_lm_head:
            options.append("prune_lm_head=true")
        source_flag = "-i" if Path(self.source).is_dir() else "-m"
        cache = self.cache or self.out / ".cache"
        return [
            self.python, "-m", "onnxruntime_genai.models.builder",
            source_flag, self.source, "-o", str(self.out / self.variant),
            "-p", self.precision, "-e", PROVIDERS[self.provider], "-c", str(cache),
            "--extra_options", *options,
        ]  # fmt: skip


def convert(plan: ConvertPlan, name: str | None = None) -> Path:
    """Run the builder, then write manifest.toml; returns the model directory."""
    check = subprocess.run(
        [plan.python, "-c", "import torch, transformers, onnxruntime_genai.models.builder"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise ConvertError(
            f"{plan.python} cannot run the model builder (it needs torch, transformers and "
            "onnx): pip install 'edge-agent[build-models]' or pass --python .venv-build/bin/python"
        )
    built = subprocess.run(plan.command())
    if built.returncode != 0:
        raise ConvertError(f"the model builder failed (exit {built.returncode})")
    variant_dir = plan.out / plan.variant
    config = json.loads((variant_dir / "genai_config.json").read_text())
    manifest = {
        "name": name or Path(plan.source.rstrip("/")).name.lower(),
        "description": f"converted from {plan.source} by edge-agent models convert",
        "context_length": int(config["model"].get("context_length", 4096)),
        "source": {"converted_from": plan.source, "builder": " ".join(plan.command()[1:4])},
        "variants": [
            {
                "name": plan.variant,
                "provider": plan.provider,
                "precision": plan.precision,
                "path": plan.variant,
            }
        ],
    }
    if "/" in plan.source and not Path(plan.source).exists():
        manifest["hf_id"] = plan.source
    write_manifest(plan.out, manifest)
    return plan.out
