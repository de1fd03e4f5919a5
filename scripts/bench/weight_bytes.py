"""How many weight bytes a decode step reads, for the memory-bandwidth bound in peers.py.

A decode step streams every weight once, except lookup tables (the input embedding is a
Gather: one row per token). Prints JSON {"file_bytes", "streamed_bytes", "lookup_bytes"}.
Runs in the build environment (.venv-build: `onnx`; GGUF files need llama.cpp's gguf-py,
passed as --gguf-py from the llama-cpp-python source distribution).
Usage: python weight_bytes.py MODEL.onnx | MODEL.gguf [--gguf-py DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

LOOKUP_OPS = {"Gather", "GatherBlockQuantized"}


def onnx_sizes(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = defaultdict(set)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].add(node.op_type)
    total = lookup = 0
    for tensor in model.graph.initializer:
        external = {entry.key: entry.value for entry in tensor.external_data}
        size = int(external["length"]) if "length" in external else len(tensor.raw_data)
        total += size
        if consumers[tensor.name] and consumers[tensor.name] <= LOOKUP_OPS:
            lookup += size
    return {"streamed_bytes": total - lookup, "lookup_bytes": lookup}


def gguf_sizes(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    # Tied embeddings: with no output.weight, token_embd is also the LM head (streamed).
    lookup = tensors.get("token_embd.weight", 0) if "output.weight" in tensors else 0
    return {"streamed_bytes": sum(tensors.values()) - lookup, "lookup_bytes": lookup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--gguf-py", type=Path)
    args = parser.parse_args()
    if args.gguf_py:
        sys.path.insert(0, str(args.gguf_py))
    sizes = gguf_sizes(args.model) if args.model.suffix == ".gguf" else onnx_sizes(args.model)
    file_bytes = sum(f.stat().st_size for f in args.model.parent.glob(args.model.name + "*"))
    print(json.dumps({"file_bytes": file_bytes, **sizes}))


if __name__ == "__main__":
    main()
