"""Benchmark: decode tokens/s per available execution provider and thread count.

Runs the daemon's own LocalEngine for every provider the ranking accepts on this machine
(plus CPU), at 1 and 2 intra-op threads, alternating configurations round by round, on the
bench model (128-token prompt, 128 greedy tokens). Prints one table and what `auto` picks.

Usage: python scripts/bench/providers.py [--model models/bench] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from dataclasses import replace
from pathlib import Path

from bench_common import REPO, ensure_model

from agent.engine.loading import LoadPlan
from agent.engine.local import LocalEngine
from agent.engine.select import select
from agent.engine.types import ChatRequest, SamplingParams
from agent.hardware.inventory import detect
from agent.hardware.providers import Installed
from agent.settings import EngineSettings

PROMPT = " ".join(f"sensor {i} reports {i * 7 % 100} degrees." for i in range(40))


async def measure(plan: LoadPlan, threads: int, tokens: int) -> tuple[float, float]:
    engine = LocalEngine([plan], EngineSettings(max_context=1024, max_batch=1), threads=threads)
    await engine.start()
    try:
        ids = engine.tokenize(PROMPT)[:128]
        request = ChatRequest(
            model="bench",
            prompt=engine._require_tokenizer().decode(ids),
            sampling=SamplingParams(max_tokens=tokens, temperature=0),
        )
        final = None
        async for chunk in (await engine.submit(request)).chunks:
            final = chunk
        return final.timings.time_to_first_token_s, final.timings.decode_tokens_per_s
    finally:
        await engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "bench")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    ensure_model(args.model)
    selection = select(args.model, None, "auto", False, {}, detect(), Installed.probe())
    configs = [(plan, threads) for plan in selection.plans for threads in (1, 2)]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for plan, threads in configs:
            outcome = asyncio.run(measure(replace(plan), threads, args.tokens))
            results.setdefault((plan.label, threads), []).append(outcome)
    cpu_2 = statistics.median(r[1] for r in results[("cpu", 2)])
    print(f"\nbench model {args.model}, 128-token prompt, {args.tokens} greedy tokens, medians\n")
    print("| provider | threads | TTFT ms | decode tok/s | vs cpu@2 |")
    print("| --- | --- | --- | --- | --- |")
    for (label, threads), runs in results.items():
        ttft = statistics.median(r[0] for r in runs)
        tps = statistics.median(r[1] for r in runs)
        print(f"| {label} | {threads} | {ttft * 1e3:.0f} | {tps:.1f} | {tps / cpu_2:.2f} |")
    print(f"\n`auto` picks: {selection.plans[0].label}")


if __name__ == "__main__":
    main()
