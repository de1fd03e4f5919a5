"""One in-process inference engine in a process of its own, for scripts/bench/peers.py.

Each engine gets its own process so that its peak RSS is its own and no two engines share
a thread pool or the GIL. The parent writes one JSON request per line on stdin,
{"prompt": TEXT, "tokens": N}, and reads one JSON line back per request:
{"ttft_s", "decode_tps", "generated", "prompt_tokens"}. Generation is greedy and ignores
end-of-sequence, so every engine makes exactly N tokens.

Engines: `og-engine` (onnxruntime-genai's og.Engine, what the daemon drives),
`og-generator` (og.Generator, the only og API that runs models built with
prune_lm_head=true in 0.18), `llama-cpp` (llama-cpp-python on a GGUF file).
Usage: python engine_worker.py ENGINE MODEL_PATH --threads 2 --max-length 512
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

Timing = tuple[float, list[float], int]  # started, token stamps, prompt tokens


def og_config(path: str, threads: int, max_length: int, extra: dict | None = None):
    import onnxruntime_genai as og

    config = og.Config(path)
    overlay = {
        "model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}},
        "search": {"max_length": max_length},
        **(extra or {}),
    }
    config.overlay(json.dumps(overlay))
    config.clear_providers()
    return og, og.Model(config)


def og_engine(path: str, threads: int, max_length: int) -> Callable[[str, int], Timing]:
    import numpy as np

    # The daemon's static batch capacity (peers.py runs it with --max-batch 8), so the
    # comparison isolates what the daemon adds around the same engine.
    extra = {"engine": {"static_batching": {"max_batch_size": 8}}}
    og, model = og_config(path, threads, max_length, extra)
    tokenizer = og.Tokenizer(model)
    engine = og.Engine(model)
    events = engine.create_event_buffer(64)

    def run(prompt: str, tokens: int) -> Timing:
        started = time.perf_counter()
        ids = tokenizer.encode(prompt)
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(tokens)
        options.set_min_generated_tokens(tokens)
        options.set_do_sample(False)
        request.begin_turn(np.asarray(ids, dtype=np.int32), options)
        stamps = []
        while engine.has_pending_requests():
            for event in engine.run(events):
                if event.token is not None:
                    stamps.append(time.perf_counter())
        request.close()
        return started, stamps, len(ids)

    return run


def og_generator(path: str, threads: int, max_length: int) -> Callable[[str, int], Timing]:
    og, model = og_config(path, threads, max_length)
    tokenizer = og.Tokenizer(model)

    def run(prompt: str, tokens: int) -> Timing:
        started = time.perf_counter()
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(
            do_sample=False, max_length=len(ids) + tokens, min_length=len(ids) + tokens
        )
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            stamps.append(time.perf_counter())
        return started, stamps, len(ids)

    return run


def llama_cpp(path: str, threads: int, max_length: int) -> Callable[[str, int], Timing]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=max_length,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        verbose=False,
    )

    def run(prompt: str, tokens: int) -> Timing:
        started = time.perf_counter()
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        stamps = []
        for _ in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())
            if len(stamps) == tokens:
                break
        return started, stamps, len(ids)

    return run


ENGINES = {"og-engine": og_engine, "og-generator": og_generator, "llama-cpp": llama_cpp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=sorted(ENGINES))
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    run = ENGINES[args.engine](args.model, args.threads, args.max_length)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started, stamps, prompt_tokens = run(request["prompt"], request["tokens"])
        reply = {
            "ttft_s": stamps[0] - started,
            "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "generated": len(stamps),
            "prompt_tokens": prompt_tokens,
        }
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
