"""The bench model's weights as GGUF Q4_0 for llama.cpp, made with llama.cpp's own tools.

The converter comes from the source distribution of the installed llama-cpp-python (the
same llama.cpp that runs the file); it writes f16, and llama.cpp's quantizer, through
llama-cpp-python's bindings, makes Q4_0 (32-weight blocks, like the int4 ONNX model).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

from bench_common import BUILD_PYTHON

HERE = Path(__file__).parent


def llama_cpp_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def llama_cpp_source(cache: Path) -> Path:
    """vendor/llama.cpp from the installed llama-cpp-python's sdist, fetched with pip."""
    version = llama_cpp_version()
    root = cache / f"llama_cpp_python-{version}"
    if not root.is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             ":all:", f"llama-cpp-python=={version}", "-d", str(cache)],
            check=True,
        )  # fmt: skip
        with tarfile.open(cache / f"llama_cpp_python-{version}.tar.gz") as sdist:
            sdist.extractall(cache, filter="data")
    return root / "vendor" / "llama.cpp"


def quantize_q4_0(source: Path, target: Path) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {source}")


def ensure_gguf(model_dir: Path) -> tuple[Path, Path] | None:
    """(Q4_0 GGUF, llama.cpp source) for the model's hf/ folder; None without llama-cpp."""
    if llama_cpp_version() is None:
        return None
    cache = model_dir / "gguf"
    cache.mkdir(exist_ok=True)
    source = llama_cpp_source(cache)
    q4_0 = cache / "model-Q4_0.gguf"
    if not q4_0.is_file():
        f16 = cache / "model-f16.gguf"
        if not f16.is_file():
            script = HERE / "gguf_convert.py"
            subprocess.run([BUILD_PYTHON, script, source, model_dir / "hf", f16], check=True)
        quantize_q4_0(f16, q4_0)
        f16.unlink()
    return q4_0, source
