"""`edge-agent models import`: the GGUF header, refusals before any heavy work, Ollama's
store layout. The full import (dequantize + build) runs in `make real-model`."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent.models.gguf_header import GGUFError, read_gguf
from agent.models.gguf_import import tool_markup
from agent.models.ollama_store import OllamaStoreError, find_model, manifest_path
from tests.conftest import REPO

REAL_GGUF = REPO / "models" / "real" / "download" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf(path: Path, architecture: str, tensor_types: list[int]) -> Path:
    """A GGUF v3 header: general.architecture, a chat template, one tensor per type."""

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    entries = [("general.architecture", architecture), ("tokenizer.chat_template", "{{ x }}")]
    data = b"GGUF" + struct.pack("<IQQ", 3, len(tensor_types), len(entries))
    for key, value in entries:
        data += text(key) + struct.pack("<I", 8) + text(value)
    for index, kind in enumerate(tensor_types):
        data += text(f"t{index}") + struct.pack("<I", 1) + struct.pack("<Q", 4)
        data += struct.pack("<IQ", kind, 0)
    path.write_bytes(data)
    return path


def run_import(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "models", "import", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_header_reads_architecture_types_and_template(tmp_path: Path) -> None:
    info = read_gguf(gguf(tmp_path / "m.gguf", "qwen2", [0, 12, 12, 14]))
    assert (info.architecture, info.file_type, info.chat_template) == ("qwen2", "Q4_K", "{{ x }}")
    zipped = tmp_path / "x.gguf"
    zipped.write_bytes(b"PK\x03\x04")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(zipped)


@pytest.mark.parametrize(
    ("architecture", "types", "message"),
    [
        ("bloom", [0, 2], "architecture 'bloom' is not supported"),
        ("llama", [0, 28], "tensor type(s) F64 cannot be dequantized"),
    ],
)
def test_unsupported_files_are_refused_before_any_build(
    tmp_path: Path, architecture: str, types: list[int], message: str
) -> None:
    done = run_import(
        str(gguf(tmp_path / "m.gguf", architecture, types)), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 1 and message in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_python_without_the_build_tools_is_named(tmp_path: Path) -> None:
    done = run_import(str(gguf(tmp_path / "m.gguf", "llama", [0, 3])), "--out", str(tmp_path / "o"),
                      "--python", sys.executable)  # fmt: skip
    assert done.returncode == 1 and "lacks the build tools" in done.stderr


def test_ollama_names_and_store_layout(tmp_path: Path) -> None:
    assert manifest_path("qwen2.5:0.5b") == Path("registry.ollama.ai/library/qwen2.5/0.5b")
    assert manifest_path("smollm2") == Path("registry.ollama.ai/library/smollm2/latest")
    assert manifest_path("hf.co/org/repo:q4") == Path("hf.co/org/repo/q4")
    blob = tmp_path / "blobs" / ("sha256-" + "ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"GGUF....")
    manifest = tmp_path / "manifests" / manifest_path("smollm2:135m")
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00", "size": 1},
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "ab" * 32,
         "size": 8},
    ]}))  # fmt: skip
    found = find_model("smollm2:135m", [tmp_path])
    assert found.gguf == blob and found.size == 8
    with pytest.raises(OllamaStoreError, match=r"installed: smollm2:135m"):
        find_model("qwen2.5:0.5b", [tmp_path])
    done = run_import("ollama:nothing:here")
    assert done.returncode == 1 and "is not in the Ollama store" in done.stderr


def test_tool_markup_from_the_catalog_then_the_template() -> None:
    assert tool_markup("phi-4-mini-instruct", None)["start"] == "<|tool_call|>"
    assert tool_markup("x", "... <tool_call> ...") == {
        "start": "<tool_call>", "end": "</tool_call>", "format": "object"}  # fmt: skip
    assert tool_markup("x", "{{ '<|python_tag|>' }}")["end"] == "<|eom_id|>"
    assert tool_markup("x", "no tools here")["start"] == "<tool_call>"


def test_the_real_gguf_header() -> None:
    if not REAL_GGUF.is_file():
        pytest.fail("run `make real-model` first")
    info = read_gguf(REAL_GGUF)
    assert (info.architecture, info.file_type, info.context_length) == ("llama", "Q4_1", 8192)
    assert info.chat_template and "<|im_start|>" in info.chat_template
