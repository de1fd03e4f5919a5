"""`edge-agent models import FILE.gguf | ollama:NAME[:TAG]`: a GGUF model (a llama.cpp or
Ollama download) turned into an installed ONNX model the daemon serves.

Steps: read the GGUF header here (architecture and quantization checked before anything
heavy runs), dequantize it to fp32 with transformers (`gguf_dequantize.py`, run by the
Python that has the build tools), build each variant with the onnxruntime-genai builder,
then write the manifest: the chat template from the GGUF metadata, the tool-call markup
from the catalog or recognised in the template, and every file's sha256 for `verify`.
The build tools are the `build-models` extra, never a runtime dependency.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from agent.models import catalog
from agent.models.convert import ConvertPlan
from agent.models.gguf_header import GGUFInfo, read_gguf
from agent.models.ollama_store import find_model
from agent.models.store import ModelStore, sha256_of, write_manifest

DEQUANTIZE = Path(__file__).with_name("gguf_dequantize.py")
# GGUF architectures that transformers can load AND the onnxruntime-genai builder can build.
ARCHITECTURES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "nemotron"}
# Tensor types the `gguf` package dequantizes.
QUANT_TYPES = {
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
    "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S",
    "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4",
}  # fmt: skip
# Call markup recognised in a chat template: (text in the template, [tool_calls] section).
TEMPLATE_MARKUP = (
    ("<|tool_call|>", {"start": "<|tool_call|>", "end": "<|/tool_call|>", "format": "array"}),
    ("<tool_call>", {"start": "<tool_call>", "end": "</tool_call>", "format": "object"}),
    ("<|python_tag|>", {"start": "<|python_tag|>", "end": "<|eom_id|>", "format": "object"}),
)
LOG_TAIL = 20


class ImportFailed(RuntimeError):
    """The import stopped; the message says why and what to do."""


@dataclass(frozen=True)
class ImportPlan:
    source: str  # a .gguf path or ollama:NAME[:TAG]
    name: str | None = None
    precisions: tuple[str, ...] = ("int4",)
    provider: str = "cpu"
    block_size: int = 32
    python: str = sys.executable
    keep_hf: Path | None = None  # keep the dequantized Hugging Face folder here


@dataclass(frozen=True)
class Imported:
    path: Path
    name: str
    version: str
    variants: tuple[str, ...]


def resolve_source(source: str) -> tuple[Path, dict[str, Any]]:
    """The GGUF file and where it came from (for the manifest)."""
    if source.startswith("ollama:"):
        model = find_model(source.removeprefix("ollama:"))
        return model.gguf, {"ollama": model.name, "digest": model.digest}
    path = Path(source)
    if not path.is_file():
        raise ImportFailed(f"{source}: no such file (a .gguf path or ollama:NAME[:TAG])")
    return path, {"gguf": str(path.resolve())}


def check_supported(info: GGUFInfo) -> None:
    """Refuse files the dequantizer or the builder cannot handle, before any work."""
    if info.architecture not in ARCHITECTURES:
        raise ImportFailed(
            f"{info.path.name}: architecture {info.architecture!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    unknown = sorted(set(info.tensor_types) - QUANT_TYPES)
    if unknown:
        raise ImportFailed(
            f"{info.path.name}: tensor type(s) {', '.join(unknown)} cannot be dequantized "
            f"(supported: {', '.join(sorted(QUANT_TYPES))})"
        )


def model_name(plan: ImportPlan, gguf: Path, info: GGUFInfo) -> str:
    """--name, else the file or Ollama name without its quantization suffix."""
    if plan.name:
        return plan.name
    if plan.source.startswith("ollama:"):
        entry = _catalog_entry(plan.source.removeprefix("ollama:"))
        if entry is not None:
            return entry.name
        stem = plan.source.removeprefix("ollama:").split("/")[-1].replace(":", "-")
    else:
        stem = gguf.name.removesuffix(".gguf")
        stem = re.sub(rf"[.-]{re.escape(info.file_type)}$", "", stem, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-") or "imported"


def tool_markup(name: str, template: str | None) -> dict[str, Any]:
    """The catalog's [tool_calls] for this model, else the markup its template writes, else
    the Hermes form (`<tool_call>{...}</tool_call>`), which the tool prompt then teaches."""
    entry = _catalog_entry(name)
    if entry is not None and "tool_calls" in entry.manifest:
        return dict(entry.manifest["tool_calls"])
    for text, markup in TEMPLATE_MARKUP:
        if template and text in template:
            found: dict[str, Any] = dict(markup)
            if markup["format"] == "array" and "message['tools']" in template:
                found["tools_in_system"] = True
            return found
    return dict(TEMPLATE_MARKUP[1][1])


def _catalog_entry(name: str) -> catalog.CatalogEntry | None:
    try:
        return catalog.find(name)
    except catalog.CatalogError:
        return None


def import_gguf(plan: ImportPlan, store: ModelStore | None = None, out: Path | None = None,
                console: Console | None = None) -> Imported:  # fmt: skip
    """Import into `store` (models_dir/NAME/VERSION) or, with `out`, into that folder."""
    console = console or Console(stderr=True)
    gguf, origin = resolve_source(plan.source)
    info = read_gguf(gguf)
    check_supported(info)
    _check_tools(plan.python)
    name = model_name(plan, gguf, info)
    if out is not None:
        staging = out.with_name(out.name + ".partial")
    else:
        assert store is not None
        staging = store.root / ".partial" / f"{name}-import"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log_path = staging / "import.log"
    hf = staging / ".hf"
    with _steps(console) as step:
        with step(f"hashing {gguf.name}"):
            digest = origin.get("digest", "").removeprefix("sha256:") or sha256_of(gguf)
        with step(f"dequantizing {info.file_type} to fp32 (transformers)"):
            _run([plan.python, str(DEQUANTIZE), str(gguf), str(hf)], log_path)
        variants = []
        for precision in plan.precisions:
            convert = ConvertPlan(str(hf), staging, precision, plan.provider, python=plan.python,
                                  cache=staging / ".cache", block_size=plan.block_size)  # fmt: skip
            with step(f"building {convert.variant} (onnxruntime-genai builder)"):
                _run(convert.command(), log_path)
            _install_template(staging / convert.variant, info.chat_template)
            variants.append(convert)
        with step("writing the manifest"):
            shutil.rmtree(staging / ".cache", ignore_errors=True)
            if plan.keep_hf is not None:
                shutil.rmtree(plan.keep_hf, ignore_errors=True)
                plan.keep_hf.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(hf, plan.keep_hf)
            shutil.rmtree(hf, ignore_errors=True)
            log_path.unlink()
            manifest = _manifest(name, info, origin, digest, variants, staging)
            write_manifest(staging, manifest)
    version = f"gguf-{info.file_type.lower()}-{digest[:8]}"
    if out is not None:
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
        path = out
    else:
        assert store is not None
        path = store.install(staging, name, version)
    return Imported(path, name, version, tuple(v.variant for v in variants))


@contextmanager
def _steps(console: Console) -> Iterator[Any]:
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:

        @contextmanager
        def step(description: str) -> Iterator[None]:
            task = progress.add_task(description, total=1)
            yield
            progress.update(task, completed=1)

        yield step


def _check_tools(python: str) -> None:
    check = subprocess.run(
        [python, "-c", "import torch, transformers, gguf, accelerate, "
         "onnxruntime_genai.models.builder"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if check.returncode != 0:
        missing = check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "?"
        raise ImportFailed(
            f"{python} lacks the build tools ({missing}): pip install 'edge-agent[build-models]' "
            "or pass --python .venv-build/bin/python (make real-model builds one)"
        )


def _run(command: list[str], log_path: Path) -> None:
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-LOG_TAIL:])
        raise ImportFailed(f"{Path(command[1]).name} failed (exit {done.returncode}):\n{tail}")


def _install_template(variant_dir: Path, template: str | None) -> None:
    """onnxruntime-genai reads chat_template.jinja: the GGUF's own template, verbatim."""
    if template:
        (variant_dir / "chat_template.jinja").write_text(template)


def _manifest(name: str, info: GGUFInfo, origin: dict[str, Any], digest: str,
              variants: list[ConvertPlan], folder: Path) -> dict[str, Any]:  # fmt: skip
    entry = _catalog_entry(name)
    manifest: dict[str, Any] = {
        "name": name,
        "description": (entry.description if entry else info.name or name)
        + f" (imported from GGUF {info.file_type})",
        "context_length": info.context_length or 4096,
        "family": info.architecture,
    }
    if "general.size_label" in info.metadata:
        manifest["parameter_size"] = str(info.metadata["general.size_label"])
    if entry is not None and "hf_id" in entry.manifest:
        manifest["hf_id"] = entry.manifest["hf_id"]
    manifest["source"] = {**origin, "sha256": digest, "file_type": info.file_type}
    if info.chat_template:
        manifest["chat_template"] = info.chat_template
    manifest["tool_calls"] = tool_markup(name, info.chat_template)
    manifest["variants"] = [
        {"name": v.variant, "provider": v.provider, "precision": v.precision, "path": v.variant}
        | ({"block_size": v.block_size} if v.precision == "int4" else {})
        for v in variants
    ]
    manifest["files"] = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]
    return manifest
