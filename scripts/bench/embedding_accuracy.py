"""What the int4 input embedding (`models convert --compact`) costs in accuracy, on real weights.

SmolLM2-135M-Instruct ties its embedding and LM head like Phi-4-mini. Its Hugging Face
folder (models/real/hf, `make real-model`) is built by the onnxruntime-genai builder two
ways, both int4 block 32 with accuracy level 4: `shared_embeddings=true` (compact: the
embedding is read from the LM head's int4 blocks) and `shared_embeddings=false` (the
prebuilt layout: an fp32 embedding, a separate int4 LM head). Both, and the fp32 build
(models/real/smollm2-135m-instruct/cpu-fp32), read the same English text token by token
(teacher forcing, og.Generator); the script reports each one's perplexity on it, and
against the fp32 build the mean KL divergence of the next-token distribution and how often
the top-1 token agrees.
Usage: .venv/bin/python scripts/bench/embedding_accuracy.py [--tokens 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from bench_common import BUILD_PYTHON, REPO

REAL = REPO / "models" / "real"
OUT = REAL / "layouts"
LAYOUTS = {"int4 compact": "shared_embeddings=true", "int4 fp32-embed": "shared_embeddings=false"}


def build(name: str, option: str) -> Path:
    folder = OUT / name.replace(" ", "-")
    if not (folder / "genai_config.json").is_file():
        with tempfile.TemporaryDirectory() as cache:
            subprocess.run(
                [BUILD_PYTHON, "-m", "onnxruntime_genai.models.builder", "-i", REAL / "hf",
                 "-o", folder, "-p", "int4", "-e", "cpu", "-c", cache, "--extra_options",
                 "block_size=32", "accuracy_level=4", option],
                check=True,
            )  # fmt: skip
    return folder


def text() -> str:
    """Plain English prose that ships with Python: the standard library's docstrings."""
    import argparse as a
    import json as j
    import logging as lg
    import subprocess as s

    return "\n\n".join(m.__doc__ or "" for m in (a, s, lg, j))


def log_probs(folder: Path, ids: list[int]) -> np.ndarray:
    """Next-token log-probabilities after each prefix of `ids` (teacher forcing)."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1)
    generator = og.Generator(model, params)
    rows = []
    for token in ids[:-1]:
        generator.append_tokens([token])
        logits = generator.get_logits()[0, -1].astype(np.float64)
        rows.append(logits - np.logaddexp.reduce(logits))
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    folders = {"fp32": REAL / "smollm2-135m-instruct" / "cpu-fp32"}
    folders |= {name: build(name, option) for name, option in LAYOUTS.items()}
    tokenizer = og.Tokenizer(og.Model(str(folders["fp32"])))
    ids = [int(t) for t in tokenizer.encode(text())[: args.tokens]]
    targets = np.array(ids[1:])
    results = {name: log_probs(folder, ids) for name, folder in folders.items()}
    reference = results["fp32"]
    print(f"SmolLM2-135M, {len(ids)} tokens of standard-library docstrings, teacher forcing\n")
    print("| build | weights file MiB | perplexity | KL vs fp32 (nats/token) | top-1 = fp32 |")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for name, rows in results.items():
        size = sum(f.stat().st_size for f in folders[name].glob("*.onnx*")) / (1 << 20)
        perplexity = float(np.exp(-rows[np.arange(len(targets)), targets].mean()))
        kl = float((np.exp(reference) * (reference - rows)).sum(axis=1).mean())
        agree = float((rows.argmax(axis=1) == reference.argmax(axis=1)).mean())
        summary[name] = {"mib": size, "perplexity": perplexity, "kl": kl, "top1": agree}
        print(f"| {name} | {size:.0f} | {perplexity:.3f} | {kl:.4f} | {agree:.1%} |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
