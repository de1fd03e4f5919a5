"""Build a benchmark model (not committed) from random weights, in the shape asked for.

Shapes:
- `bench` (models/bench): Llama, hidden 1024, 8 layers, 16 heads, 4 KV heads,
  intermediate 2816, vocab 32000, ~155M parameters.
- `phi4-mini` (models/bench-phi4-mini-L{layers}): Phi-4-mini-instruct's real width, heads,
  200064-token vocabulary, partial rotary embedding and tied embeddings, with fewer layers
  (`--layers`, default 4), to measure per-layer cost and what the vocabulary costs.

Each gets a byte-level BPE tokenizer trained offline on Python source, and is converted by
the onnxruntime-genai builder to int4 for the CPU twice: `cpu-int4` (what the daemon
serves: onnxruntime-genai 0.18's static CPU og.Engine cannot run pruned logits) and
`cpu-int4-pruned` (`prune_lm_head=true`: prefill computes logits for the last position
only). `--block-size` sets the int4 block (32 by default, like llama.cpp's Q4_0; other
sizes go to a `-bs{N}` folder). The Hugging Face folder is kept in `hf/` for other
converters (GGUF for llama.cpp).

`--variants` picks the builds. Two more compare the layouts of a tied model such as
Phi-4-mini: `cpu-int4-compact` (the builder's default for a tied model: one int4 matrix is
both the embedding and the LM head) and `cpu-int4-fp32-embed` (`shared_embeddings=false`:
Microsoft's prebuilt layout, an fp32 input embedding plus a separate int4 LM head).
`--dtype bfloat16` makes and saves the random weights in bf16: Phi-4-mini at full depth
(3.8B parameters) is 15 GB in fp32, too much for a 24 GB machine that also runs the builder.
Even so, the builder peaks at ~21 GB there, and `cpu-int4-fp32-embed` at 32 layers does not
fit in 24 GB: scripts/bench/unshare_embedding.py makes that layout from `cpu-int4` instead.
Needs the build tools (torch==2.13.0, transformers, tokenizers, onnx, onnx_ir).
Usage: python scripts/build_bench_model.py [--shape bench|phi4-mini] [--layers N]
                                           [--block-size 32] [--out DIR]
                                           [--variants cpu-int4,...] [--dtype bfloat16]
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
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
)

VARIANTS = {
    "cpu-int4": (),
    "cpu-int4-pruned": ("prune_lm_head=true",),
    "cpu-int4-compact": ("shared_embeddings=true",),
    "cpu-int4-fp32-embed": ("shared_embeddings=false",),
}
DEFAULT_VARIANTS = "cpu-int4,cpu-int4-pruned"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MANIFEST = """\
name = "{name}"
description = "Random-weight {shape} model for benchmarks (scripts/build_bench_model.py)"
context_length = 4096
"""
VARIANT_ENTRY = """
[[variants]]
name = "{variant}"
provider = "cpu"
precision = "int4"
path = "{variant}"
"""


def training_text(vocab_size: int) -> list[str]:
    """Python source: the standard library, and for a large vocabulary the build tools'
    packages too (a 200K-token BPE needs that many distinct merges)."""
    roots = [Path(sysconfig.get_paths()["stdlib"])]
    limit = 3000
    if vocab_size > 50_000:
        roots.append(Path(sysconfig.get_paths()["purelib"]))
        limit = 40_000
    files = sorted(f for root in roots for f in root.rglob("*.py"))[:limit]
    return [f.read_text(encoding="utf-8", errors="ignore") for f in files]


def tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(training_text(vocab_size), trainer)
    print(f"tokenizer: {bpe.get_vocab_size()} tokens (model vocabulary {vocab_size})")
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


def bench_model(fast: PreTrainedTokenizerFast, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    return LlamaForCausalLM(config)


def phi4_mini_model(fast: PreTrainedTokenizerFast, layers: int) -> Phi3ForCausalLM:
    """Phi-4-mini-instruct's config.json, but `layers` deep and a 4K context."""
    config = Phi3Config(
        vocab_size=200064,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=24,
        num_key_value_heads=8,
        partial_rotary_factor=0.75,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    return Phi3ForCausalLM(config)


SHAPES = {"bench": (32000, 8, bench_model), "phi4-mini": (200064, 4, phi4_mini_model)}


def default_folder(shape: str, layers: int | None, block_size: int) -> Path:
    name = "bench" if shape == "bench" else f"bench-{shape}-L{layers or SHAPES[shape][1]}"
    return Path("models") / (name if block_size == 32 else f"{name}-bs{block_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="bench")
    parser.add_argument("--layers", type=int, help="decoder layers (default: the shape's)")
    parser.add_argument("--block-size", type=int, default=32, choices=(16, 32, 64, 128, 256))
    parser.add_argument("--out", type=Path, help="default models/bench[-phi4-mini-L{layers}]")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    vocab_size, default_layers, make_model = SHAPES[args.shape]
    layers = args.layers or default_layers
    out = args.out or default_folder(args.shape, args.layers, args.block_size)
    # One set of weights per shape: other block sizes reuse the block-32 folder's hf/.
    hf_dir = (out if args.out else default_folder(args.shape, args.layers, 32)) / "hf"
    if not (hf_dir / "config.json").is_file():
        fast = tokenizer(vocab_size)
        torch.manual_seed(0)
        torch.set_default_dtype(DTYPES[args.dtype])
        make_model(fast, layers).save_pretrained(hf_dir, safe_serialization=True)
        torch.set_default_dtype(torch.float32)
        fast.save_pretrained(hf_dir)
    for variant in variants:
        options = VARIANTS[variant]
        if (out / variant / "genai_config.json").is_file():
            continue
        with tempfile.TemporaryDirectory() as cache:
            block = (f"block_size={args.block_size}",)
            run_builder(hf_dir, out / variant, "int4", Path(cache), options + block)
    built = [v for v in VARIANTS if (out / v / "genai_config.json").is_file()]
    entries = "".join(VARIANT_ENTRY.format(variant=v) for v in built)
    (out / "manifest.toml").write_text(MANIFEST.format(name=out.name, shape=args.shape) + entries)
    print(f"built {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
