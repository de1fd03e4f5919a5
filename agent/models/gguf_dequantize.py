"""Dequantize a GGUF file into a Hugging Face folder (fp32 safetensors, tokenizer, config).

Run as a script by `edge-agent models import` with the Python that has the build tools
(torch, transformers, gguf, accelerate), so the daemon's environment never needs them:
    python gguf_dequantize.py FILE.gguf OUT_DIR
It imports nothing from edge-agent. transformers reads the GGUF tensors and dequantizes
them with the `gguf` package; it then marks the model as quantized and refuses to save
it, so the quantizer marks are cleared (the weights really are plain fp32 by then).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def dequantize(gguf: Path, out: Path) -> None:
    import torch  # type: ignore[import-not-found]
    from transformers import (  # type: ignore[import-not-found]
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    # The builder and onnxruntime-genai read the chat template from tokenizer_config.json;
    # newer transformers write it to chat_template.jinja only.
    template = getattr(tokenizer, "chat_template", None)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if template and not config.get("chat_template"):
        config["chat_template"] = template
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    dequantize(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
