"""Convert a Hugging Face folder to an f16 GGUF with llama.cpp's own converter.

The converter (convert_hf_to_gguf.py) and its gguf-py library come from the
llama-cpp-python source distribution, so the GGUF matches the llama.cpp that runs it.
Runs in the build environment (.venv-build: torch, transformers, numpy).

The converter recognises a BPE pre-tokenizer by hashing what it makes of a test string,
and knows only published tokenizers'; the bench models' tokenizers are trained here, with
GPT-2's byte-level pre-tokenizer, so an unknown hash is taken as "gpt-2".
Usage: python gguf_convert.py LLAMA_CPP_SRC HF_DIR OUT.gguf
"""

from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path


def main() -> None:
    source, hf_dir, out = (Path(arg) for arg in sys.argv[1:4])
    sys.path[:0] = [str(source / "gguf-py"), str(source)]
    import convert_hf_to_gguf as converter

    # Newer llama.cpp moved the model classes into the `conversion` package.
    text_model = getattr(converter, "TextModel", None) or import_module("conversion").TextModel
    recognise = text_model.get_vocab_base_pre

    def vocab_base_pre(model, tokenizer) -> str:
        try:
            return recognise(model, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    text_model.get_vocab_base_pre = vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", str(hf_dir), "--outfile", str(out), "--outtype", "f16"]
    converter.main()


if __name__ == "__main__":
    main()
