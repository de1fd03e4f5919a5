"""Find a model's GGUF blob in a local Ollama store, for `models import ollama:NAME[:TAG]`.

Ollama keeps `manifests/HOST/NAMESPACE/MODEL/TAG` (an OCI-style JSON manifest) and
`blobs/sha256-HEX` under its models folder: `$OLLAMA_MODELS`, else `~/.ollama/models`, else
`/usr/share/ollama/.ollama/models` (the Linux service's home). The model layer is a GGUF
file; other layers (template, params, license) are Ollama's own formats.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODEL_LAYER = "application/vnd.ollama.image.model"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
SERVICE_HOME = Path("/usr/share/ollama/.ollama/models")


class OllamaStoreError(LookupError):
    """No such model in the Ollama store; the message says where it looked and what exists."""


@dataclass(frozen=True)
class OllamaModel:
    name: str  # as the user wrote it, with its tag
    gguf: Path
    digest: str  # sha256:HEX of the GGUF layer
    size: int


def store_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The models folders to search, in order."""
    env = os.environ if environ is None else environ
    if env.get("OLLAMA_MODELS"):
        return [Path(env["OLLAMA_MODELS"])]
    return [Path.home() / ".ollama" / "models", SERVICE_HOME]


def manifest_path(name: str) -> Path:
    """`qwen2.5:0.5b` -> registry.ollama.ai/library/qwen2.5/0.5b; `hf.co/org/repo:q4` ->
    hf.co/org/repo/q4; the tag defaults to `latest`."""
    model, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
    parts = model.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_HOST, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_HOST, *parts]
    if not all(parts) or not tag or ".." in parts:
        raise OllamaStoreError(f"{name!r} is not an Ollama model name (NAME[:TAG])")
    return Path(*parts, tag)


def find_model(name: str, roots: list[Path] | None = None) -> OllamaModel:
    """The GGUF blob of `name` in the first store that has it."""
    roots = store_roots() if roots is None else roots
    relative = manifest_path(name)
    for root in roots:
        path = root / "manifests" / relative
        if path.is_file():
            return _read(name, root, path)
    searched = ", ".join(str(r) for r in roots)
    have = ", ".join(installed(roots)) or "none"
    raise OllamaStoreError(
        f"{name} is not in the Ollama store (searched {searched}; installed: {have}); "
        "set OLLAMA_MODELS to Ollama's models folder"
    )


def installed(roots: list[Path]) -> list[str]:
    """The NAME:TAG of every model in the stores (library models without their prefix)."""
    names = []
    for root in roots:
        base = root / "manifests"
        for path in sorted(base.glob("*/*/*/*")):
            host, namespace, model, tag = path.relative_to(base).parts
            prefix = "" if host == DEFAULT_HOST else f"{host}/"
            if host != DEFAULT_HOST or namespace != DEFAULT_NAMESPACE:
                prefix += f"{namespace}/"
            names.append(f"{prefix}{model}:{tag}")
    return names


def _read(name: str, root: Path, path: Path) -> OllamaModel:
    try:
        layers = json.loads(path.read_text())["layers"]
    except (ValueError, KeyError, TypeError):
        raise OllamaStoreError(f"{path} is not an Ollama manifest") from None
    layer = next((item for item in layers if item.get("mediaType") == MODEL_LAYER), None)
    if layer is None:
        raise OllamaStoreError(f"{name} has no model layer in {path} (an adapter or a projector?)")
    digest = layer["digest"]
    blob = root / "blobs" / digest.replace(":", "-")
    if not blob.is_file():
        raise OllamaStoreError(f"{name}: its model blob {blob} is missing; ollama pull {name}")
    if blob.stat().st_size != layer.get("size", blob.stat().st_size):
        raise OllamaStoreError(
            f"{name}: {blob} is {blob.stat().st_size} bytes, the manifest says {layer['size']}"
        )
    return OllamaModel(name, blob, digest, blob.stat().st_size)
