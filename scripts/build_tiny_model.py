"""Build the bundled smoke-test model into agent/data/tiny/ (package data).

A tiny Llama-architecture model with fixed-seed random weights and a byte-level BPE
tokenizer trained offline, converted by the onnxruntime-genai builder to an int4 CPU
variant (the daemon's default) and an fp32 CPU variant. transformers then records greedy
continuations of fixed prompts on the same weights into reference.json, which the test
suite compares against the daemon's own output (tokenizer, chat template and generation
checked across implementations).

Needs the build tools (torch==2.13.0, transformers, tokenizers, onnx, onnx_ir); never a
runtime or test dependency. Usage: python scripts/build_tiny_model.py [--out agent/data/tiny]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 20261130
VOCAB_SIZE = 640
CONTEXT_LENGTH = 16384
MAX_NEW_TOKENS = 24
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, with tools in the Qwen/Hermes style: a tool list in the system turn, calls as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>, results in `tool` turns.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    '{{ \'# Tools\\nCall a function as <tool_call>{"name": NAME, "arguments": {...}}'
    "</tool_call>\\n<tools>\\n' }}"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}"
    "{{ '</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] %}{{ '<tool_call>' }}"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>tool\\n<tool_response>' + message['content'] }}"
    "{{ '</tool_response><|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
REFERENCE_PROMPTS = [
    [{"role": "user", "content": "Hello, gateway!"}],
    [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "What is the temperature of sensor 7?"},
    ],
    [{"role": "user", "content": "Summarise the last hour of vibration data."}],
    [{"role": "user", "content": "Report the pressure of the pump."}],
    [{"role": "user", "content": "Is the broker up?"}],
    [{"role": "user", "content": "The gateway publishes its status every minute."}],
]


def corpus(lines: int = 4000) -> list[str]:
    """A deterministic synthetic corpus about gateways and sensors (no download)."""
    rng = random.Random(SEED)
    subjects = ["the gateway", "sensor 7", "the pump", "a device", "the broker", "the model"]
    verbs = ["reports", "publishes", "measures", "answers", "streams", "logs"]
    objects = [
        "the temperature",
        "a vibration spike",
        "the pressure",
        "its status",
        "a warning",
        "the answer",
    ]
    tails = ["every minute.", "at noon.", "when asked!", "over MQTT.", "in JSON?", "twice."]
    words = list(itertools.chain(subjects, verbs, objects, tails))
    out = []
    for _ in range(lines):
        sentence = " ".join(rng.choice(part) for part in (subjects, verbs, objects, tails))
        noise = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 4)))
        out.append(f"{sentence.capitalize()} {noise} {digits}".strip())
    return out


def ascii_alphabet() -> list[str]:
    """The byte-level symbols of printable ASCII, tab and newline, and no others.

    Without lone non-ASCII byte tokens a random-weight model can only emit valid UTF-8, so
    every implementation decodes its output to the same text (invalid byte runs are
    implementation-defined: transformers writes U+FFFD, onnxruntime-genai drops them).
    """
    printable = [9, 10, *range(32, 127)]
    byte_level = bytes_to_unicode()
    return [byte_level[b] for b in printable]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode table used by byte-level BPE."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in visible}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def train_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ascii_alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=CONTEXT_LENGTH,
    )


def build_hf_model(hf_dir: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    torch.manual_seed(SEED)
    tokenizer = train_tokenizer()
    eos_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT_LENGTH,
        initializer_range=0.08,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    _mark_tokenizer_class(hf_dir)
    return model, tokenizer


def _mark_tokenizer_class(hf_dir: Path) -> None:
    """onnxruntime-extensions picks its BPE flavour from tokenizer_class: say GPT-2."""
    path = hf_dir / "tokenizer_config.json"
    data = json.loads(path.read_text())
    data["tokenizer_class"] = "GPT2Tokenizer"
    data["add_bos_token"] = False
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_builder(
    hf_dir: Path, out: Path, precision: str, cache: Path, extra_options: tuple[str, ...] = ()
) -> None:
    """No prune_lm_head by default: onnxruntime-genai 0.18's static CPU og.Engine fails
    (an ENGINE_EXECUTION_FAILURE on the first step) on models whose logits are pruned."""
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        "cpu",
        "-c",
        str(cache),
    ]
    if extra_options:
        cmd += ["--extra_options", *extra_options]
    subprocess.run(cmd, check=True)


def record_reference(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> dict:
    cases = []
    for messages in REFERENCE_PROMPTS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
            )
        generated = output[0, len(prompt_ids) :].tolist()
        cases.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_token_ids": prompt_ids,
                "max_tokens": MAX_NEW_TOKENS,
                "completion_token_ids": generated,
                "completion_text": tokenizer.decode(generated, skip_special_tokens=True),
            }
        )
    return {"variant": "cpu-fp32", "generator": "transformers greedy", "cases": cases}


MANIFEST = """\
# The bundled smoke-test model: random weights, tiny, for tests and first runs only.
name = "tiny"
description = "Random-weight tiny Llama with a byte-level BPE tokenizer (smoke tests only)"
source = "scripts/build_tiny_model.py"
context_length = {context_length}
aliases = ["tiny:latest"]

[tool_calls]  # how the chat template writes calls
start = "<tool_call>"
end = "</tool_call>"
format = "object"

[[variants]]
name = "cpu-int4"
provider = "cpu"
precision = "int4"
path = "cpu-int4"

[[variants]]
name = "cpu-fp32"
provider = "cpu"
precision = "fp32"
path = "cpu-fp32"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("agent/data/tiny"))
    args = parser.parse_args()
    out: Path = args.out
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        hf_dir = tmp_path / "hf"
        model, tokenizer = build_hf_model(hf_dir)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        for precision in ("int4", "fp32"):
            run_builder(hf_dir, out / f"cpu-{precision}", precision, tmp_path / "cache")
        reference = record_reference(model, tokenizer)
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    (out / "manifest.toml").write_text(MANIFEST.format(context_length=CONTEXT_LENGTH))
    print(f"built {out}")


if __name__ == "__main__":
    main()
