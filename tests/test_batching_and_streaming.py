"""How the engine hands work out: a burst of requests shares one static batch, and a long
stream goes out as a few multi-token events (the first at once) that add up exactly."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from tests.conftest import Daemon


def test_a_burst_of_requests_shares_one_batch(daemon_factory) -> None:
    # A wide window makes "arrived together" independent of this machine's speed.
    burst = daemon_factory("--max-batch", "4", env={"EDGE_AGENT_BATCH_WINDOW_MS": "300"})
    client = openai.OpenAI(base_url=f"{burst.url}/v1", api_key="unused")
    together = threading.Barrier(4)

    def ask(index: int) -> int:
        together.wait()
        reply = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": f"Reading {index}?"}],
            max_tokens=8,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return reply.usage.completion_tokens

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, range(4))) == [8, 8, 8, 8]
    metrics = httpx.get(f"{burst.url}/metrics", timeout=10).text
    counted = [line for line in metrics.splitlines() if line.startswith("edge_agent_engine_batch")]
    assert counted == ['edge_agent_engine_batches_total{size="4"} 1.0']


def test_a_long_stream_goes_out_in_few_events_that_add_up(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused")
    ask = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me everything."}],
        "max_tokens": 300,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.chat.completions.create(**ask).choices[0].message.content
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    deltas = [c.choices[0].delta.content for c in chunks if c.choices]
    deltas = [delta for delta in deltas if delta]
    assert "".join(deltas) == whole
    assert chunks[-1].usage.completion_tokens == 300
    # Tokens go out every stream_interval_ms (25 ms), not as one event each.
    assert 1 < len(deltas) <= 100
