"""`edge-agent models convert`: the onnxruntime-genai model builder with edge-agent's
defaults, and a manifest next to the result so the daemon can serve it.

The builder needs torch, transformers and onnx (`pip install 'edge-agent[build-models]'`,
or `make model` for .venv-build); it never runs inside the daemon. `prune_lm_head` is off by
default: onnxruntime-genai 0.18's CPU engine cannot run pruned models (see README).

A gateway cannot run the builder, so the result carries every file's sha256 three ways:
`manifest.toml`'s `files` (what `models verify` re-checks once installed), the variant
folder's `sha256sums` (what `models pull --from OUT/VARIANT` checks) and `files.json` (the
`manifest_url` of a fleet `cmd/update_model` that serves OUT from any HTTP server).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from agent.models.store import sha256_of

PROVIDERS = {"cpu": "cpu", "cuda": "cuda", "dml": "dml", "webgpu": "webgpu"}
SUMS = "sha256sums"
FLEET_LIST = "files.json"


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
    # One int4 matrix as both input embedding and LM head (a tied model only): Phi-4-mini's
    # 200064 x 3072 embedding is 2.46 GB in fp32 in the prebuilt layout (see README).
    compact: bool = False

    @property
    def variant(self) -> str:
        return f"{self.provider}-{self.precision}" + ("-compact" if self.compact else "")

    def options(self) -> list[str]:
        # The builder's current names: its `int4_`-prefixed aliases are silently ignored.
        options = [f"block_size={self.block_size}"]
        if self.provider == "cpu" and self.precision == "int4":
            options.append("accuracy_level=4")
        if self.prune_lm_head:
            options.append("prune_lm_head=true")
        if self.compact:
            options.append("shared_embeddings=true")
        return options

    def command(self) -> list[str]:
        source_flag = "-i" if Path(self.source).is_dir() else "-m"
        cache = self.cache or self.out / ".cache"
        return [
            self.python, "-m", "onnxruntime_genai.models.builder",
            source_flag, self.source, "-o", str(self.out / self.variant),
            "-p", self.precision, "-e", PROVIDERS[self.provider], "-c", str(cache),
            "--extra_options", *self.options(),
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
    manifest: dict[str, Any] = {
        "name": name or Path(plan.source.rstrip("/")).name.lower(),
        "description": f"converted from {plan.source} by edge-agent models convert",
        "context_length": int(config["model"].get("context_length", 4096)),
        "source": {
            "converted_from": plan.source,
            "builder": " ".join(plan.command()[1:3]),
            "options": plan.options(),
        },
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
    write_hashes(plan.out, variant_dir, manifest)
    return plan.out


def write_hashes(out: Path, variant_dir: Path, manifest: dict[str, Any]) -> None:
    """`sha256sums` in the variant folder, the manifest's `files` (the variant's files,
    with their folder), then `files.json`: those and the manifest itself. Written with the
    umask's modes, not atomic_write's 0600: any web server's user must be able to read them."""
    sums = variant_dir / SUMS
    sums.unlink(missing_ok=True)
    files = _hashed(variant_dir)
    sums.write_text("".join(f"{f['sha256']}  {f['path']}\n" for f in files))
    files.append(_entry(sums, variant_dir))
    prefix = variant_dir.relative_to(out).as_posix()
    manifest["files"] = [{**f, "path": f"{prefix}/{f['path']}"} for f in files]
    top = out / "manifest.toml"
    top.write_text(tomli_w.dumps(manifest))
    fleet = [_entry(top, out), *manifest["files"]]
    (out / FLEET_LIST).write_text(json.dumps({"files": fleet}, indent=1) + "\n")


def _hashed(folder: Path) -> list[dict[str, Any]]:
    """Every file under `folder` but hidden ones (nothing serves them)."""
    return [
        _entry(path, folder)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(folder).parts)
    ]


def _entry(path: Path, folder: Path) -> dict[str, Any]:
    relative = path.relative_to(folder).as_posix()
    return {"path": relative, "size": path.stat().st_size, "sha256": sha256_of(path)}
