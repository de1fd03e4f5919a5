"""Benchmark: memory while loading a model, and what each lever does to it (issue 22 item 4).

Each (model, lever) loads in a fresh process of its own, the way the daemon loads
(agent/engine/loading.py: og.Model with the daemon's session and search settings, then
og.Engine with its static batch, the daemon's default of 4), then serves `--repeats` greedy
requests on og.Generator (the daemon's path for a lone request) to check that the lever
does not cost decode speed. The KV cache og.Engine allocates for its static batch is in the
second peak, not the first. The child reports /proc/self/status at each stage; the parent
samples the child's anonymous and file-backed resident memory every 5 ms, so the peak is
split into heap (prepacked weights, arena, KV cache) and mapped file pages (onnxruntime maps
page-aligned external initializers; clean file pages, the kernel can drop them).

Levers (`--levers`, comma-separated):
  baseline      the daemon's settings today
  no-prepack    session config `session.disable_prepacking=1` (kernels use the file's layout)
  no-arena      `enable_cpu_mem_arena=false` (no BFC arena rounding allocations up)
  init-alloc    `session.use_device_allocator_for_initializers=1` (initializers outside the arena)
  aligned       the same weights rewritten with every tensor at a 4 KiB offset, so that
                onnxruntime maps them instead of copying them into the heap
  unaligned     the opposite, for a model that is aligned already (offsets + 64 bytes)
  no-engine     og.Model alone, og.Engine created after the first request (load order)
  acc1          MatMulNBits at accuracy level 1 (fp32 compute) instead of the builder's 4
                (int8 compute, whose packed weights are larger than the int4 file): the same
                weights, only model.onnx's attributes rewritten
  prepacked     a copy that onnxruntime optimized and saved once with its prepacked weights
                in the external data file (`session.save_external_prepacked_constant_
                initializers`), so that a load maps them instead of packing them again
Rewritten copies are cached in models/bench-footprint/ (git-ignored).

Usage: python scripts/bench/load_footprint.py VARIANT_DIR [VARIANT_DIR ...]
           [--levers baseline,no-prepack,...] [--tokens 32] [--repeats 2] [--passes 1]
           [--sentences 12]
           [--max-length 512] [--max-batch 4] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MIB = 1 << 20
CACHE = Path(__file__).resolve().parents[2] / "models" / "bench-footprint"
PAGE = 4096
LEVERS = {
    "baseline": {},
    "no-prepack": {"session.disable_prepacking": "1"},
    "no-arena": {"enable_cpu_mem_arena": False},
    "init-alloc": {"session.use_device_allocator_for_initializers": "1"},
    "aligned": {},
    "unaligned": {},
    "no-engine": {},
    "prepacked": {},
    "acc1": {},
}


def prompt(sentences: int) -> str:
    return " ".join(f"sensor {i} reports {i * 7 % 100} degrees." for i in range(sentences))


def status() -> dict[str, int]:
    """This process's memory figures from /proc/self/status, in bytes."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0]) * 1024
    return found


def child(variant: str, session: dict, threads: int, max_length: int, max_batch: int,
          engine_first: bool, tokens: int, repeats: int, sentences: int) -> None:  # fmt: skip
    """Load like the daemon, report each stage's memory, then time greedy requests."""
    started = time.perf_counter()

    def stage(name: str, **extra: float) -> None:
        figures = {"stage": name, "t": time.perf_counter() - started, **status(), **extra}
        print(json.dumps(figures), flush=True)

    import numpy as np
    import onnxruntime_genai as og

    stage("imported")
    config = og.Config(variant)
    options = {"intra_op_num_threads": threads, **session}
    config.overlay(json.dumps({
        "model": {"decoder": {"session_options": options}},
        "search": {"max_length": max_length},
        "engine": {"static_batching": {"max_batch_size": max_batch}},
    }))  # fmt: skip
    config.clear_providers()
    model = og.Model(config)
    stage("model")
    engine = og.Engine(model) if engine_first else None
    stage("loaded")
    tokenizer = og.Tokenizer(model)
    ids = np.asarray(tokenizer.encode(prompt(sentences)), dtype=np.int32)
    ttfts, rates = [], []
    for _ in range(repeats):
        params = og.GeneratorParams(model)
        length = len(ids) + tokens
        params.set_search_options(do_sample=False, max_length=length, min_length=length)
        generator = og.Generator(model, params)
        begin = time.perf_counter()
        generator.append_tokens(ids)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter())
        ttfts.append(stamps[0] - begin)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        del generator
    if engine is None:
        engine = og.Engine(model)
    stage("served", ttft_s=statistics.median(ttfts), decode_tps=statistics.median(rates))
    time.sleep(1)  # idle: let the allocator settle
    stage("idle")


def _copy_without_weights(variant: Path, kind: str) -> tuple[Path, bool]:
    """CACHE's folder for `variant` made by `kind`, and whether it is made already; if not,
    it now holds every file of `variant` but the graph and its weights."""
    target = CACHE / f"{variant.parent.name}-{variant.name}-{kind}"
    if (target / "model.onnx").is_file():
        return target, True
    target.mkdir(parents=True, exist_ok=True)
    for item in variant.iterdir():
        if item.name not in ("model.onnx", "model.onnx.data"):
            shutil.copy(item, target / item.name)
    return target, False


def rewrite(variant: Path, shift: int) -> Path:
    """A copy of `variant` whose model.onnx.data holds every tensor at a page boundary plus
    `shift` bytes (0: onnxruntime can map each tensor; 64: it cannot map any)."""
    import onnx

    target, made = _copy_without_weights(variant, "aligned" if shift == 0 else "unaligned")
    if made:
        return target
    graph = onnx.load(str(variant / "model.onnx"), load_external_data=False)
    with (variant / "model.onnx.data").open("rb") as source, \
            (target / "model.onnx.data").open("wb") as out:  # fmt: skip
        for tensor in graph.graph.initializer:
            fields = {e.key: e.value for e in tensor.external_data}
            if "location" not in fields:
                continue
            source.seek(int(fields.get("offset", 0)))
            data = source.read(int(fields["length"]))
            offset = -(-out.tell() // PAGE) * PAGE + shift
            out.write(b"\0" * (offset - out.tell()))
            out.write(data)
            fields["offset"] = str(offset)
            del tensor.external_data[:]
            for key, value in fields.items():
                tensor.external_data.add(key=key, value=value)
    onnx.save(graph, str(target / "model.onnx"))
    return target


def prepacked(variant: Path) -> Path:
    """A copy of `variant` as onnxruntime saves it after optimizing and prepacking."""
    target, made = _copy_without_weights(variant, "prepacked")
    if made:
        return target
    saving = {
        "session.optimized_model_filepath": str(target / "model.onnx"),
        "session.save_external_prepacked_constant_initializers": "1",
        "session.optimized_model_external_initializers_file_name": "model.onnx.data",
        "session.optimized_model_external_initializers_min_size_in_bytes": "1024",
    }
    code = (
        "import json, sys, onnxruntime_genai as og; c = og.Config(sys.argv[1]); "
        "options = json.loads(sys.argv[2]); "
        "c.overlay(json.dumps({'model': {'decoder': {'session_options': options}}})); "
        "c.clear_providers(); og.Model(c)"
    )
    subprocess.run([sys.executable, "-c", code, str(variant), json.dumps(saving)], check=True)
    return target


def accuracy_level(variant: Path, level: int) -> Path:
    """A copy of `variant` whose MatMulNBits nodes compute at `level` (weights hard-linked)."""
    import onnx

    target = CACHE / f"{variant.parent.name}-{variant.name}-acc{level}"
    if (target / "model.onnx").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for item in variant.iterdir():
        if item.name == "model.onnx.data":
            (target / item.name).hardlink_to(item)  # onnxruntime refuses symlinks out
        elif item.name != "model.onnx":
            shutil.copy(item, target / item.name)
    graph = onnx.load(str(variant / "model.onnx"), load_external_data=False)
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            for attribute in node.attribute:
                if attribute.name == "accuracy_level":
                    attribute.i = level
    onnx.save(graph, str(target / "model.onnx"))
    return target


class Sampler(threading.Thread):
    """Peak RssAnon / RssFile of a process, sampled every 5 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = Path(f"/proc/{pid}/status")
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.005):
            try:
                text = self.path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)


def measure(variant: Path, lever: str, args: argparse.Namespace) -> dict[str, float]:
    """One fresh load of `variant` with `lever`: its stages and the sampled peaks."""
    if lever in ("aligned", "unaligned"):
        variant = rewrite(variant, 0 if lever == "aligned" else 64)
    elif lever == "prepacked":
        variant = prepacked(variant)
    elif lever == "acc1":
        variant = accuracy_level(variant, 1)
    command = [sys.executable, __file__, "--child", str(variant), "--session",
               json.dumps(LEVERS[lever]), "--threads", str(args.threads),
               "--max-length", str(args.max_length), "--max-batch", str(args.max_batch),
               "--tokens", str(args.tokens), "--repeats", str(args.repeats),
               "--sentences", str(args.sentences)]  # fmt: skip
    if lever == "no-engine":
        command.append("--engine-last")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid)
    sampler.start()
    stages, load_peaks = {}, {}
    for line in process.stdout:
        event = json.loads(line)
        stages[event["stage"]] = event
        if event["stage"] == "loaded":
            load_peaks = dict(sampler.peak)
    sampler.stopped.set()
    if process.wait() != 0 or "idle" not in stages:
        raise RuntimeError(f"{variant} with {lever} failed")
    weights = sum(f.stat().st_size for f in variant.glob("model.onnx*"))
    loaded, idle, served = stages["loaded"], stages["idle"], stages["served"]
    return {
        "weights_mib": weights / MIB,
        "load_s": loaded["t"] - stages["imported"]["t"],
        "load_peak_mib": loaded["VmHWM"] / MIB,
        "load_peak_ratio": loaded["VmHWM"] / weights,
        "load_peak_anon_mib": load_peaks["RssAnon"] / MIB,
        "load_peak_file_mib": load_peaks["RssFile"] / MIB,
        "model_peak_mib": stages["model"]["VmHWM"] / MIB,
        "model_peak_ratio": stages["model"]["VmHWM"] / weights,
        "idle_rss_mib": idle["VmRSS"] / MIB,
        "idle_anon_mib": idle["RssAnon"] / MIB,
        "idle_file_mib": idle["RssFile"] / MIB,
        "peak_rss_mib": idle["VmHWM"] / MIB,
        "ttft_ms": served["ttft_s"] * 1e3,
        "decode_tps": served["decode_tps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", type=Path)
    parser.add_argument("--levers", default="baseline,no-prepack,no-arena,init-alloc,aligned")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--sentences", type=int, default=12, help="prompt: ~9 tokens each")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--session", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--engine-last", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.session), args.threads, args.max_length,
              args.max_batch, not args.engine_last, args.tokens, args.repeats,
              args.sentences)  # fmt: skip
        return
    levers = args.levers.split(",")
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for number in range(args.passes):
        for variant in args.variants:
            # Alternate the order between passes: page cache and machine noise hit all alike.
            for lever in levers if number % 2 == 0 else levers[::-1]:
                figures = measure(variant, lever, args)
                name = f"{variant.parent.name}/{variant.name}"
                results.setdefault(name, {}).setdefault(lever, []).append(figures)
                print(f"{name} {lever}: {json.dumps(figures)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{args.threads} threads, max_length {args.max_length}, static batch {args.max_batch}, "
          f"{args.repeats} og.Generator requests of ~{args.sentences * 9}+{args.tokens} tokens, "
          f"medians of {args.passes} passes")  # fmt: skip
    print("\n| model | lever | weights MiB | load s | peak after og.Model MiB (x weights) "
          "| peak after og.Engine MiB (x weights) | of which anon / file MiB "
          "| idle RSS MiB (anon + file) | TTFT ms | decode tok/s |")  # fmt: skip
    print("| --- " * 10 + "|")
    for name, by_lever in results.items():
        for lever, runs in by_lever.items():

            def mid(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(
                f"| {name} | {lever} | {mid('weights_mib'):.0f} | {mid('load_s'):.2f} "
                f"| {mid('model_peak_mib'):.0f} ({mid('model_peak_ratio'):.2f}x) "
                f"| {mid('load_peak_mib'):.0f} ({mid('load_peak_ratio'):.2f}x) "
                f"| {mid('load_peak_anon_mib'):.0f} / {mid('load_peak_file_mib'):.0f} "
                f"| {mid('idle_rss_mib'):.0f} ({mid('idle_anon_mib'):.0f} + "
                f"{mid('idle_file_mib'):.0f}) | {mid('ttft_ms'):.0f} | {mid('decode_tps'):.1f} |"
            )


if __name__ == "__main__":
    main()
