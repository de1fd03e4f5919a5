"""Resolve a model directory into the variant folder to load and the facts the daemon needs.

A model directory is either one onnxruntime-genai folder (`genai_config.json`) or a folder
with `manifest.toml` listing variants per provider (the bundled model and pulled models).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class ModelDirError(ValueError):
    """The model directory cannot be used; the message says why."""


@dataclass(frozen=True)
class SearchDefaults:
    """Sampling defaults the model author wrote into genai_config.json's `search`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    vocab_size: int | None = None  # a top_k past it means no cut; onnxruntime-genai refuses it


@dataclass(frozen=True)
class ToolMarkup:
    """How the model writes tool calls (manifest `[tool_calls]`).

    `object`: one `start {"name":..,"arguments":{..}} end` block per call (Qwen, Hermes);
    `array`: one block holding a JSON array of calls (Phi-4-mini:
    `<|tool_call|>[...]<|/tool_call|>`). `tools_in_system`: the chat template reads the
    tool list from the system message's `tools` field (Phi-4-mini) instead of `tools`.
    `json_style`: the JSON the grammar lets the model write, `compact` (fewer tokens, and
    more calls completed on SmolLM2-135M: scripts/eval/RESULTS.md) or `spaced`, as Python
    and chat templates print it.
    """

    start: str = "<tool_call>"
    end: str = "</tool_call>"
    format: Literal["object", "array"] = "object"
    tools_in_system: bool = False
    json_style: Literal["compact", "spaced"] = "compact"

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ToolMarkup:
        section = manifest.get("tool_calls", {})
        markup = cls(**{k: v for k, v in section.items() if k in cls.__dataclass_fields__})
        if markup.format not in ("object", "array"):
            raise ModelDirError(f"tool_calls.format must be object or array, not {markup.format!r}")
        if markup.json_style not in ("spaced", "compact"):
            raise ModelDirError(
                f"tool_calls.json_style must be spaced or compact, not {markup.json_style!r}"
            )
        return markup


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    variant: str
    provider: str
    precision: str
    context_length: int
    eos_token_ids: tuple[int, ...]
    search: SearchDefaults
    aliases: tuple[str, ...] = ()
    kv_bytes_per_token: int = 0
    manifest: dict[str, Any] = field(default_factory=dict)
    tool_markup: ToolMarkup = field(default_factory=ToolMarkup)


def variant_providers(directory: Path) -> dict[str, str]:
    """Provider -> variant name for each variant the model directory offers."""
    manifest_path = directory / "manifest.toml"
    if manifest_path.is_file():
        variants = tomllib.loads(manifest_path.read_text()).get("variants", [])
        found: dict[str, str] = {}
        for entry in variants:
            found.setdefault(entry.get("provider", "cpu"), entry["name"])
        return found
    return {_folder_provider(directory): "default"}


def resolve_model(
    directory: Path, variant: str | None = None, provider: str | None = None
) -> ModelInfo:
    """The variant named `variant`, else the first built for `provider`, else the first CPU one."""
    manifest_path = directory / "manifest.toml"
    if manifest_path.is_file():
        manifest = tomllib.loads(manifest_path.read_text())
        chosen = _pick_variant(manifest.get("variants", []), variant, provider, manifest_path)
        return _read_genai_folder(
            directory / chosen["path"],
            name=manifest.get("name", directory.name),
            variant=chosen["name"],
            provider=chosen.get("provider", "cpu"),
            precision=chosen.get("precision", "unknown"),
            aliases=tuple(manifest.get("aliases", ())),
            manifest=manifest,
            tool_markup=ToolMarkup.from_manifest(manifest),
        )
    if variant is not None:
        raise ModelDirError(f"{directory} has no manifest.toml, so no variant {variant!r}")
    return _read_genai_folder(
        directory,
        name=directory.name,
        variant="default",
        provider=_folder_provider(directory),
        precision="unknown",
    )


def _pick_variant(
    variants: list[dict[str, Any]], wanted: str | None, provider: str | None, where: Path
) -> dict[str, Any]:
    if not variants:
        raise ModelDirError(f"{where} lists no variants")
    if wanted is not None:
        for entry in variants:
            if entry["name"] == wanted:
                return entry
        names = ", ".join(v["name"] for v in variants)
        raise ModelDirError(f"variant {wanted!r} not in {where} (have: {names})")
    for preferred in (provider, "cpu"):
        matching = [v for v in variants if v.get("provider", "cpu") == preferred]
        if matching:
            return matching[0]
    return variants[0]


def _folder_provider(directory: Path) -> str:
    """The provider a bare builder folder was made for, from its genai_config.json."""
    try:
        config = json.loads((directory / "genai_config.json").read_text())
        options = config["model"]["decoder"]["session_options"].get("provider_options", [])
    except (OSError, KeyError, ValueError):
        return "cpu"
    return next(iter(options[0]), "cpu").lower() if options else "cpu"


def _read_genai_folder(path: Path, **facts: Any) -> ModelInfo:
    config_path = path / "genai_config.json"
    if not config_path.is_file():
        raise ModelDirError(f"{path} has no genai_config.json")
    config = json.loads(config_path.read_text())
    model = config["model"]
    decoder = model["decoder"]
    eos = model.get("eos_token_id", [])
    search = config.get("search", {})
    kv_heads = decoder.get("num_key_value_heads", decoder.get("num_attention_heads", 0))
    # fp32 KV on CPU: 2 (K and V) x layers x kv_heads x head_size x 4 bytes per token.
    kv_bytes = 2 * decoder.get("num_hidden_layers", 0) * kv_heads * decoder.get("head_size", 0) * 4
    return ModelInfo(
        path=path,
        context_length=int(model.get("context_length", search.get("max_length", 2048))),
        eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
        search=SearchDefaults(
            do_sample=bool(search.get("do_sample", False)),
            temperature=float(search.get("temperature", 1.0)),
            top_p=float(search.get("top_p", 1.0)),
            top_k=int(search.get("top_k", 50)),
            repetition_penalty=float(search.get("repetition_penalty", 1.0)),
            vocab_size=model.get("vocab_size"),
        ),
        kv_bytes_per_token=kv_bytes,
        **facts,
    )
