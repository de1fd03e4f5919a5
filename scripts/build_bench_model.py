"""Build the benchmark model into models/bench/ (not committed).

A random-weight Llama (hidden 1024, 8 layers, 16 heads, 4 KV heads, intermediate 2816,
vocab 32000, ~155M parameters) with a byte-level BPE tokenizer trained offline on the
Python standard library's source, converted to onnxruntime-genai int4 for the CPU.
Needs the build tools (torch==2.13.0, transformers, tokenizers, onnx, onnx_ir).
Usage: python scripts/build_bench_model.py [--out models/bench]
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
from build_tiny_model import CHAT_TEMPLATE, SPECIAL_TOKENS, run_builder
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

MANIFEST = """\
name = "bench"
description = "Random-weight ~155M Llama for benchmarks (scripts/build_bench_model.py)"
context_length = 4096

[[variants]]
name = "cpu-int4"
provider = "cpu"
precision = "int4"
path = "cpu-int4"
"""


def stdlib_text() -> list[str]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[:3000]
    return [f.read_text(encoding="utf-8", errors="ignore") for f in files]


def build(hf_dir: Path) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=32000,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(stdlib_text(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(hf_dir, safe_serialization=True)
    fast.save_pretrained(hf_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/bench"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = Path(tmp) / "hf"
        build(hf_dir)
        run_builder(hf_dir, args.out / "cpu-int4", "int4", Path(tmp) / "cache")
    (args.out / "manifest.toml").write_text(MANIFEST)
    print(f"built {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
