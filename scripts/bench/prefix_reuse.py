"""Prompt-prefix reuse in onnxruntime-genai 0.18: which mechanism skips a shared prefix's
prefill, and what it saves (issue 22 item 2; figures in scripts/bench/RESULTS.md).

Each round asks a new question behind the same ~100-token system prompt, three ways, side
by side in one process, and reports the time to first token:
- `cold`: a fresh og.Generator prefills prefix + question (what the daemon does today);
- `generator-rewind`: one og.Generator kept alive holding the prefix; `rewind_to(len(prefix))`
  drops the previous question and its answer, then only the question is prefilled;
- `engine-turn`: og.Engine keeps a Request whose first turn was the prefix and rewinds to
  the start of each question's turn. A turn must generate at least one token, so the
  prefix turn leaves a generated token in the sequence: the script reports whether the
  answers still match the cold ones (they need not).
Greedy decoding; every answer is compared with the cold one.

Usage: python scripts/bench/prefix_reuse.py [--model DIR] [--rounds 8] [--tokens 8]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from bench_common import REPO

SYSTEM = (
    "You are a careful assistant for an industrial gateway. Answer briefly and precisely "
    "about sensors, valves and pumps. "
) * 5
QUESTIONS = ["What is a valve?", "What is a pump?", "What is a sensor?", "What is a relay?"]
FINISHED = int(og.EngineEventFlags.TURN_FINISHED)
TOKEN = int(og.EngineEventFlags.TOKEN)


class Model:
    def __init__(self, path: Path, max_length: int) -> None:
        self.model = og.Model(str(path))
        self.tokenizer = og.Tokenizer(self.model)
        self.max_length = max_length
        self.prefix = self.encode(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def question(self, text: str) -> np.ndarray:
        return self.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def generator(self) -> og.Generator:
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False)
        return og.Generator(self.model, params)


def decode(generator: og.Generator, ids: np.ndarray, tokens: int) -> tuple[float, list[int]]:
    """Prefill `ids` on top of what the generator holds, then greedy tokens; (TTFT s, ids)."""
    started = time.perf_counter()
    generator.append_tokens(ids)
    out: list[int] = []
    first = 0.0
    for _ in range(tokens):
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        first = first or time.perf_counter() - started
    return first, out


class EngineTurns:
    """og.Engine with one long-lived Request: the prefix turn, then a turn per question."""

    def __init__(self, model: Model) -> None:
        self.engine = og.Engine(model.model)
        self.buffer = self.engine.create_event_buffer(64)
        options = og.RequestOptions()
        options.set_max_session_tokens(model.max_length)
        self.request = self.engine.create_request(options=options)
        self.turn(model.prefix, 1)  # the least a turn may generate

    def turn(self, ids: np.ndarray, tokens: int) -> tuple[float, list[int], int]:
        options = og.TurnOptions(self.request)
        options.set_max_generated_tokens(tokens)
        options.set_do_sample(False)
        started = time.perf_counter()
        turn_id = self.request.begin_turn(ids, options)
        out: list[int] = []
        first = 0.0
        finished = False
        while not finished:
            for event in self.engine.run(self.buffer):
                if int(event.flags) & TOKEN:
                    out.append(int(event.token))
                    first = first or time.perf_counter() - started
                finished = finished or bool(int(event.flags) & FINISHED)
        return first, out, turn_id

    def ask(self, ids: np.ndarray, tokens: int) -> tuple[float, list[int]]:
        first, out, turn_id = self.turn(ids, tokens)
        self.request.rewind_to_start_of_turn(turn_id)
        return first, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO / "models" / "real" / "smollm2-135m-instruct" / "cpu-int4"
    parser.add_argument("--model", type=Path, default=default)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    args = parser.parse_args()
    model = Model(args.model, args.max_length)
    kept = model.generator()
    kept.append_tokens(model.prefix)
    turns = EngineTurns(model)
    ttft: dict[str, list[float]] = {"cold": [], "generator-rewind": [], "engine-turn": []}
    same = {"generator-rewind": 0, "engine-turn": 0}
    for round_ in range(args.rounds + 1):  # round 0 warms every path up, not counted
        question = model.question(QUESTIONS[round_ % len(QUESTIONS)])
        cold_s, cold = decode(
            model.generator(), np.concatenate([model.prefix, question]), args.tokens
        )
        kept.rewind_to(len(model.prefix))
        rewind_s, rewound = decode(kept, question, args.tokens)
        turn_s, turned = turns.ask(question, args.tokens)
        if round_ == 0:
            continue
        for name, value in (
            ("cold", cold_s),
            ("generator-rewind", rewind_s),
            ("engine-turn", turn_s),
        ):
            ttft[name].append(value)
        same["generator-rewind"] += rewound == cold
        same["engine-turn"] += turned == cold
    print(
        f"model {args.model}, prefix {len(model.prefix)} tokens, question ~{len(question)} tokens,"
        f" {args.rounds} paired rounds, greedy {args.tokens} tokens"
    )
    print("| path | TTFT ms (median) | vs cold (median of paired ratios) | answers equal to cold |")
    print("| --- | --- | --- | --- |")
    for name, values in ttft.items():
        ratios = [v / c for v, c in zip(values, ttft["cold"], strict=True)]
        equal = f"{same[name]}/{args.rounds}" if name in same else "-"
        print(
            f"| {name} | {statistics.median(values) * 1000:.0f} | "
            f"{statistics.median(ratios):.2f}x | {equal} |"
        )


if __name__ == "__main__":
    main()
