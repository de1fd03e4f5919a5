"""Benchmark: the two int4 layouts of a tied-embedding model (Phi-4-mini), one at a time.

`cpu-int4` (the builder's default for a tied model, what `models convert --compact` makes:
one int4 matrix is both embedding and LM head) against `cpu-int4-fp32-embed`
(`shared_embeddings=false`: Microsoft's prebuilt layout, an fp32 input embedding plus a
separate int4 LM head), both built by scripts/build_bench_model.py. Each variant runs alone
in its own engine_worker.py process (og.Engine, the daemon's engine, with the daemon's
static batch of 8). Each pass starts fresh workers, loading them one after the other (the
first one alternates), then sends each prompt to both in a random order, so that the noise
of a shared machine hits both alike (paired ratios):
  - weights file (model.onnx + model.onnx.data) and what a decode step streams
    (weight_bytes.py);
  - load time and peak RSS at load (VmHWM once the engine says ready, before any request);
  - median time to first token and decode tokens/s over `--rounds` greedy requests
    (`--prompt-tokens` tokens of text, `--tokens` generated, end-of-sequence ignored);
  - idle RSS 1 s after the last request, split into anonymous memory (heap: prepacked
    weights, KV cache) and file pages (onnxruntime memory-maps page-aligned external
    initializers: a lookup table's rows count only once they are read), and the peak RSS
    over the whole run.
Usage: python scripts/bench/phi4_layouts.py MODEL_DIR [--variants cpu-int4,cpu-int4-fp32-embed]
           [--passes 2] [--rounds 3] [--tokens 64] [--prompt-tokens 128] [--threads 2]
           [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import time
from pathlib import Path

from bench_common import BUILD_PYTHON
from peer_clients import Prompt, Run, WorkerPeer, current_rss, peak_rss
from tokenizers import Tokenizer

HERE = Path(__file__).parent
MIB = 1 << 20


def prompts(variant: Path, length: int, count: int) -> list[Prompt]:
    """`count` texts of at most `length` tokens that differ from their first token on."""
    tokenizer = Tokenizer.from_file(str(variant / "tokenizer.json"))
    words = " ".join(f"sensor {i} reports {i * 7 % 100} degrees." for i in range(400)).split()
    made = []
    for n in range(count):
        low, high = 1, len(words)
        while low < high:  # the most words that fit behind this prompt's own tag
            middle = (low + high + 1) // 2
            text = f"run {n}: " + " ".join(words[:middle])
            if len(tokenizer.encode(text).ids) <= length:
                low = middle
            else:
                high = middle - 1
        text = f"run {n}: " + " ".join(words[:low])
        made.append(Prompt([], text, len(tokenizer.encode(text).ids)))
    return made


def status(pid: int, *fields: str) -> dict[str, int]:
    """Figures from /proc/PID/status (kB there), in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            found[key] = int(value.split()[0]) * 1024
    return found


def streamed(variant: Path) -> dict[str, int]:
    done = subprocess.run(
        [BUILD_PYTHON, HERE / "weight_bytes.py", variant / "model.onnx"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def one_pass(
    variants: list[Path],
    texts: list[Prompt],
    tokens: int,
    threads: int,
    rng: random.Random,
    base: str,
) -> dict[str, dict[str, float]]:
    """Load each variant in its own worker (one after the other, so each load's peak is its
    own), then send every prompt to all of them in a new random order each round."""
    max_length = max(p.tokens for p in texts) + tokens + 16
    workers: dict[str, WorkerPeer] = {}
    figures: dict[str, dict[str, float]] = {}
    runs: dict[str, list[Run]] = {v.name: [] for v in variants}
    try:
        for variant in variants:
            started = time.perf_counter()
            workers[variant.name] = WorkerPeer(
                variant.name, "og-engine", variant, threads, max_length
            )
            figures[variant.name] = {
                "load_s": time.perf_counter() - started,
                "load_peak_mib": peak_rss(workers[variant.name].pid) / MIB,
            }
        for prompt in texts:
            for name in rng.sample(list(workers), len(workers)):
                runs[name].append(workers[name].run(prompt, tokens))
                time.sleep(0.2)  # the last engine's spinning threads wind down
        time.sleep(1)  # idle: let the allocator settle
        for name, worker in workers.items():
            split = status(worker.pid, "RssAnon", "RssFile")
            figures[name] |= {
                "idle_rss_mib": current_rss(worker.pid) / MIB,
                "idle_anon_mib": split["RssAnon"] / MIB,
                "idle_file_mib": split["RssFile"] / MIB,
                "peak_rss_mib": peak_rss(worker.pid) / MIB,
                "ttft_ms": statistics.median(r.ttft_s for r in runs[name]) * 1e3,
                "decode_tps": statistics.median(r.decode_tps for r in runs[name]),
                "prompt_tokens": statistics.median(r.prompt_tokens for r in runs[name]),
            }
    finally:
        for worker in workers.values():
            worker.close()
    for name in runs:  # paired: this variant's figure over the first one's, same prompt
        figures[name]["decode_ratio"] = statistics.median(
            r.decode_tps / f.decode_tps for r, f in zip(runs[name], runs[base], strict=True)
        )
        figures[name]["ttft_ratio"] = statistics.median(
            r.ttft_s / f.ttft_s for r, f in zip(runs[name], runs[base], strict=True)
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--variants", default="cpu-int4,cpu-int4-fp32-embed")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = [args.model / v for v in args.variants.split(",")]
    texts = prompts(variants[0], args.prompt_tokens, args.rounds * args.passes)
    results: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    rng = random.Random(0)
    for number in range(args.passes):
        order = variants if number % 2 == 0 else variants[::-1]  # which one loads first
        chosen = texts[number * args.rounds : (number + 1) * args.rounds]
        for name, figures in one_pass(
            order, chosen, args.tokens, args.threads, rng, variants[0].name
        ).items():
            results[name].append(figures)
            print(f"pass {number + 1} {name}: {figures}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    setup = f"{args.rounds} requests x {args.passes} passes, medians"
    print(f"\n{args.model.name}: {args.threads} threads, ~{args.prompt_tokens}-token prompt + "
          f"{args.tokens} greedy tokens, {setup}")  # fmt: skip
    print("\n| variant | weights file MiB | streamed MiB/token | load s | peak RSS at load MiB "
          "| idle RSS MiB (anon + file) | peak RSS MiB | TTFT ms | decode tok/s "
          f"| paired decode / TTFT vs {variants[0].name} |")  # fmt: skip
    print("| --- " * 10 + "|")
    for variant in variants:
        runs = results[variant.name]
        size = sum(f.stat().st_size for f in variant.glob("*.onnx*"))
        flow = streamed(variant)["streamed_bytes"]

        def mid(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"| {variant.name} | {size / MIB:.0f} | {flow / MIB:.0f} | {mid('load_s'):.1f} "
            f"| {mid('load_peak_mib'):.0f} | {mid('idle_rss_mib'):.0f} "
            f"({mid('idle_anon_mib'):.0f} + {mid('idle_file_mib'):.0f}) "
            f"| {mid('peak_rss_mib'):.0f} | {mid('ttft_ms'):.0f} | {mid('decode_tps'):.2f} "
            f"| {mid('decode_ratio'):.2f} / {mid('ttft_ratio'):.2f} |"
        )


if __name__ == "__main__":
    main()
