"""Make the prebuilt (`shared_embeddings=false`) layout from a compact int4 build, without
the builder.

At Phi-4-mini's full depth the onnxruntime-genai builder peaks at ~21 GB building the compact
layout and ran this 24 GB machine out of memory building `shared_embeddings=false`
(scripts/bench/RESULTS.md). The two layouts differ in one place: the compact graph reads the
embedding from the LM head's int4 blocks (Reshape + GatherBlockQuantized), the other from an
fp32 table (`model.embed_tokens.weight`, one Gather), as the builder writes it. This copies
the compact folder, appends that fp32 table (the int4 blocks dequantized: the values a random
bench model's embedding has to within rounding) to model.onnx.data, page-aligned, and swaps
the two nodes for the builder's Gather. Nothing else changes: the int4 LM head stays.
`--check BUILDER_FOLDER` compares the result with a real builder output of the same model
(node types, initializer names, shapes and types, file sizes) and the table with its fp32
embedding. Needs onnx and numpy.
Usage: python scripts/bench/unshare_embedding.py COMPACT_FOLDER OUT_FOLDER [--check DIR]
"""

from __future__ import annotations

import argparse
import collections
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = "model.onnx.data"
TABLE = "model.embed_tokens.weight"
PAGE = 4096
ROWS = 8192  # rows dequantized at a time


def dequantized_rows(q4: np.ndarray, scales: np.ndarray):
    """MatMulNBits' layout: [N, blocks, 16] bytes, two 4-bit values a byte (low nibble
    first), zero point 8, one fp32 scale per block of 32."""
    for start in range(0, q4.shape[0], ROWS):
        packed = q4[start : start + ROWS]
        low, high = packed & 0x0F, packed >> 4
        values = np.stack([low, high], axis=-1).reshape(packed.shape[0], packed.shape[1], -1)
        table = (values.astype(np.float32) - 8.0) * scales[start : start + ROWS, :, None]
        yield table.reshape(packed.shape[0], -1)


def external(tensor: TensorProto, folder: Path) -> np.ndarray:
    """An external initializer, memory-mapped (not read into memory)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    return np.memmap(
        folder / info["location"], dtype=dtype, mode="r",
        offset=int(info.get("offset", 0)), shape=tuple(tensor.dims),
    )  # fmt: skip


def unshare(compact: Path, out: Path) -> None:
    shutil.copytree(compact, out)
    model = onnx.load(str(compact / "model.onnx"), load_external_data=False)
    graph = model.graph
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    reshape = next(n for n in graph.node if n.output[0] == gather.input[0])
    inits = {t.name: t for t in graph.initializer}
    q4, scales = (
        external(inits[reshape.input[0]], compact),
        external(inits[gather.input[2]], compact),
    )
    with (out / DATA).open("r+b") as data:
        data.seek(0, 2)
        data.write(b"\0" * (-data.tell() % PAGE))
        offset = data.tell()
        for rows in dequantized_rows(q4, scales):
            data.write(rows.tobytes())
        length = data.tell() - offset
    table = TensorProto(name=TABLE, data_type=TensorProto.FLOAT)
    table.dims.extend([q4.shape[0], q4.shape[1] * q4.shape[2] * 2])
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", DATA), ("offset", str(offset)), ("length", str(length))):
        table.external_data.add(key=key, value=value)
    graph.initializer.append(table)
    lookup = helper.make_node(
        "Gather", [TABLE, gather.input[1]], list(gather.output), name="/model/embed_tokens/Gather"
    )
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.remove(reshape)
    graph.node.insert(position - 1, lookup)
    used = {name for node in graph.node for name in node.input}
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        graph.node.remove(node)
    onnx.save(model, str(out / "model.onnx"))


def summary(folder: Path) -> tuple[collections.Counter, dict, int]:
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    inits = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    return ops, inits, (folder / DATA).stat().st_size


def check(made: Path, built: Path) -> None:
    (ops, inits, size), (ops_b, inits_b, size_b) = summary(made), summary(built)
    print(f"node types equal: {ops == ops_b}  initializers equal: {inits == inits_b}")
    print(f"{DATA}: {size} bytes made, {size_b} built ({size - size_b:+d})")
    ours, theirs = (
        numpy_helper.to_array(next(t for t in onnx.load(str(f / "model.onnx")).graph.initializer
                                   if t.name == TABLE), base_dir=str(f))
        for f in (made, built)
    )  # fmt: skip
    error = np.sqrt(np.mean((ours - theirs) ** 2) / np.mean(theirs**2))
    print(f"int4 embedding vs the builder's fp32 table: relative RMS error {error:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compact", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--check", type=Path, help="a builder's shared_embeddings=false output")
    args = parser.parse_args()
    unshare(args.compact, args.out)
    print(f"wrote {args.out}")
    if args.check:
        check(args.out, args.check)


if __name__ == "__main__":
    main()
