"""Lone requests on og.Generator with prompt-prefix reuse, on the real model: the same
tokens as og.Engine, the shared prefix not prefilled again, and the event loop answering
while a long prompt is prefilled (og.Generator holds the GIL inside each prefill call)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, WEATHER_TOOL, Daemon
from tests.mqtt_support import SENTINEL, Broker, Device
from tests.real.conftest import MODEL, REAL

BUILD_PYTHON = REPO / ".venv-build" / "bin" / "python"

SYSTEM = (
    "You are a careful assistant for an industrial gateway. Answer briefly and precisely "
    "about sensors, valves and pumps. "
) * 5
QUESTIONS = ["What is a valve?", "What is a pump?", "What is a sensor?"]


def ask(daemon: Daemon, question: str, system: str = SYSTEM, **body: object) -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    reply = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"messages": messages, "temperature": 0, "max_tokens": 24, **body},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def path_figures(daemon: Daemon) -> dict:
    return daemon.status()["generator_path"]


def test_prefix_reuse_gives_the_engines_tokens_without_the_prefill(daemon_factory) -> None:
    on_generator = daemon_factory("--model", str(MODEL))
    on_engine = daemon_factory("--model", str(MODEL), "--no-single-request-generator")
    for question in QUESTIONS:
        reused = ask(on_generator, question)
        cold = ask(on_engine, question)
        assert (
            reused["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
        )
        assert reused["usage"] == cold["usage"]
    figures = path_figures(on_generator)
    assert figures["served"] == len(QUESTIONS)
    assert path_figures(on_engine)["served"] == 0
    prompt_tokens = cold["usage"]["prompt_tokens"]
    # The 2nd and 3rd requests took the system prompt (over 100 tokens) from the kept Generator.
    assert figures["reused_tokens"] >= 2 * 100
    assert figures["prefilled_tokens"] + figures["reused_tokens"] == len(QUESTIONS) * prompt_tokens
    assert figures["kept"] == 1


@pytest.mark.parametrize("entries", [1, 2])
def test_the_kept_generators_are_bounded_by_the_setting(daemon_factory, entries: int) -> None:
    """Two system prompts in turn: with one entry the second evicts the first, so the first
    asked again is prefilled in full; with two (the default) it is still there."""
    daemon = daemon_factory("--model", str(MODEL), "--prefix-cache-entries", str(entries))
    other = "Reply as the night-shift operator of a pumping station, in plain words. " * 5
    ask(daemon, QUESTIONS[0])
    ask(daemon, QUESTIONS[0], system=other)
    before = path_figures(daemon)
    assert before["kept"] == entries == before["kept_limit"]
    ask(daemon, QUESTIONS[1])  # the first system prompt again
    reused = path_figures(daemon)["reused_tokens"] - before["reused_tokens"]
    if entries == 1:
        assert reused == 0  # evicted: its memory went with it
    else:
        assert reused > 100
    # A sequence shorter than any prefix worth reusing takes no slot (with one entry, it
    # would have evicted the system prompt just asked).
    short = httpx.post(
        f"{daemon.url}/v1/completions",
        json={"prompt": "Hi", "max_tokens": 2, "temperature": 0},
        timeout=120,
    )
    assert short.status_code == 200 and short.json()["usage"]["total_tokens"] < 16
    assert path_figures(daemon)["kept"] == entries
    reused_before = path_figures(daemon)["reused_tokens"]
    ask(daemon, QUESTIONS[2])
    assert path_figures(daemon)["reused_tokens"] - reused_before > 100


def test_the_same_tools_block_is_reused_under_its_grammar(daemon_factory) -> None:
    """Tools and a required call: a grammar. The kept Generator with that grammar serves the
    next question on the same tools, with og.Engine's calls, token for token."""
    on_generator = daemon_factory("--model", str(MODEL))
    on_engine = daemon_factory("--model", str(MODEL), "--no-single-request-generator")
    body = {"tools": [WEATHER_TOOL], "tool_choice": "required", "max_tokens": 120}
    for city in ["Paris", "Rome", "Oslo"]:
        question = f"What is the weather in {city}?"
        reused = ask(on_generator, question, **body)["choices"][0]
        cold = ask(on_engine, question, **body)["choices"][0]
        assert reused["finish_reason"] == "tool_calls", reused
        assert cold["finish_reason"] == "tool_calls", cold
        calls = [c["function"] for c in reused["message"]["tool_calls"]]
        assert calls == [c["function"] for c in cold["message"]["tool_calls"]]
    figures = path_figures(on_generator)
    assert figures["served"] == 3
    assert figures["reused_tokens"] >= 2 * 100  # the system prompt and the tools block


def test_the_same_request_again_gives_the_same_tokens(daemon_factory) -> None:
    """The whole prompt is kept: all but the last tokens come from the kept Generator."""
    daemon = daemon_factory("--model", str(MODEL))
    first, again = (ask(daemon, "What is the capital of France?") for _ in range(2))
    assert again["choices"][0]["message"] == first["choices"][0]["message"]
    assert again["usage"] == first["usage"]
    assert path_figures(daemon)["reused_tokens"] >= first["usage"]["prompt_tokens"] - 2


def test_a_conversation_that_goes_on_reuses_its_history(daemon_factory) -> None:
    daemon = daemon_factory("--model", str(MODEL), "--prefix-cache-entries", "1")
    first = ask(daemon, "What is a valve?", system="Be brief.")
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is a valve?"},
        first["choices"][0]["message"],
        {"role": "user", "content": "And a pump?"},
    ]
    before = path_figures(daemon)["reused_tokens"]
    reply = httpx.post(
        f"{daemon.url}/v1/chat/completions",
        json={"messages": history, "temperature": 0, "max_tokens": 16},
        timeout=120,
    ).json()
    reused = path_figures(daemon)["reused_tokens"] - before
    assert reused >= first["usage"]["prompt_tokens"]  # the whole first exchange, at least
    assert reused < reply["usage"]["prompt_tokens"]


def test_a_burst_is_batched_on_the_engine(daemon_factory) -> None:
    daemon = daemon_factory("--model", str(MODEL), "--batch-window-ms", "200")
    results: list[dict] = []
    threads = [
        threading.Thread(target=lambda q=q: results.append(ask(daemon, q)))
        for q in [*QUESTIONS, "What is a relay?"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 4
    batches = daemon.status()["batches"]
    assert any(int(size) > 1 for size in batches), batches


def test_health_and_mqtt_answer_in_the_middle_of_a_long_prefill(
    daemon_factory, tmp_path: Path
) -> None:
    """Seen mid-prefill (some of the prompt computed, some not), /health answered then, and
    an MQTT request answered then (paho's network thread and the event loop both ran):
    impossible if one prefill call held the GIL for the whole prompt."""
    broker = Broker(tmp_path).start()
    daemon = daemon_factory(
        "--model", str(MODEL), "--max-context", "4096",
        "--mqtt-url", broker.url, "--device-id", "prefill",
    )  # fmt: skip
    device = Device(broker)
    long_prompt = " ".join(f"sensor {i} reads {i * 7 % 100} degrees;" for i in range(330))
    first_token = threading.Event()
    prompt_tokens: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST", f"{daemon.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 4,
                  "stream": True, "stream_options": {"include_usage": True}},
            timeout=120,
        ) as reply:  # fmt: skip
            for line in reply.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    first_token.set()
                if '"prompt_tokens"' in line:
                    prompt_tokens.append(int(line.split('"prompt_tokens":')[1].split(",")[0]))

    streaming = threading.Thread(target=stream)
    streaming.start()
    try:
        seen_mid_prefill, healthy_mid_prefill, mqtt_mid_prefill = _probe_mid_prefill(
            daemon, device, first_token
        )
    finally:
        streaming.join(120)
        device.close()
        broker.stop()
    assert prompt_tokens and prompt_tokens[0] >= 2000
    assert seen_mid_prefill
    assert healthy_mid_prefill
    assert mqtt_mid_prefill


def _probe_mid_prefill(
    daemon: Daemon, device: Device, first_token: threading.Event
) -> tuple[bool, bool, bool]:
    """Until the first token: whether a prefill was seen under way, and /health and an MQTT
    request answered while it still was."""
    seen_mid_prefill = healthy_mid_prefill = mqtt_mid_prefill = False
    deadline = time.monotonic() + 120

    def prefill_left() -> int:
        status = httpx.get(f"{daemon.url}/v1/agent/status", timeout=60).json()
        return int(status["generator_path"]["prefill_left"])

    while not first_token.is_set() and time.monotonic() < deadline:
        if prefill_left() > 0:
            seen_mid_prefill = True
            health = httpx.get(f"{daemon.url}/health", timeout=60)
            healthy_mid_prefill |= health.status_code == 200 and prefill_left() > 0
            if not mqtt_mid_prefill:  # rejected by the gateway itself, not the engine
                replies = device.replies(device.request("prefill", SENTINEL), timeout_s=60)
                mqtt_mid_prefill = replies[-1]["type"] == "rejected" and prefill_left() > 0
    return seen_mid_prefill, healthy_mid_prefill, mqtt_mid_prefill


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 converted with prune_lm_head=true: prefill computes the last position's
    logits only. og.Engine (0.18, CPU) cannot run it; og.Generator can."""
    out = tmp_path_factory.mktemp("pruned") / "smollm2-pruned"
    done = subprocess.run(
        [sys.executable, "-m", "agent", "models", "convert", str(REAL / "hf"), "--out", str(out),
         "--name", "smollm2-pruned", "--prune-lm-head", "--python", str(BUILD_PYTHON)],
        cwd=REPO, capture_output=True, text=True, timeout=800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return out


@pytest.mark.timeout(900)
def test_a_pruned_model_is_served_on_the_generator_alone(daemon_factory, pruned: Path) -> None:
    daemon = daemon_factory("--model", str(pruned), "--no-single-request-generator")
    assert any(e["event"].startswith("og.Engine cannot run this model") for e in daemon.logs)
    answers: list[dict] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(
                ask(daemon, "What is the capital of France?", system="Be brief.")
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(answers) == 3
    assert all("Paris" in a["choices"][0]["message"]["content"] for a in answers)
    status = daemon.status()
    assert set(status["batches"]) == {"1"}  # one at a time: no og.Engine to batch on
    assert status["generator_path"]["served"] == 3
    longer = ask(daemon, "Say hi.", system="Be brief.", min_tokens=20, max_tokens=30)
    assert longer["usage"]["completion_tokens"] >= 20
