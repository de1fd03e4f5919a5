"""The legacy POST /reasoning route and the `edge-agent chat|status` commands."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai

from tests.conftest import REPO, Daemon


def test_reasoning_maps_task_type_to_the_profile(daemon: Daemon) -> None:
    client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="unused")
    for task_type, profile in (("math", "math"), ("coding", "coding"), ("reasoning", "reasoning")):
        reply = httpx.post(
            f"{daemon.url}/reasoning",
            json={"prompt": "2+2?", "task_type": task_type, "max_length": 4, "temperature": 0},
            timeout=30,
        )
        assert reply.status_code == 200
        body = reply.json()
        assert body["profile"] == profile and body["tokens_generated"] == 4
        same = client.chat.completions.create(
            model=profile,
            messages=[{"role": "user", "content": "2+2?"}],
            max_tokens=4,
            temperature=0,
        )
        assert body["prompt_tokens"] == same.usage.prompt_tokens
        assert body["generated_text"] == same.choices[0].message.content


def test_reasoning_rejects_bad_input(daemon: Daemon) -> None:
    reply = httpx.post(f"{daemon.url}/reasoning", json={"prompt": "", "task_type": "poetry"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_request"


def test_cli_chat_streams_and_status_reports(daemon: Daemon) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args, "--url", daemon.url],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )

    chat = cli("chat", "Hello, gateway!", "--max-tokens", "8", "--temperature", "0")
    assert chat.returncode == 0
    expected = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="x").chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello, gateway!"}],
        max_tokens=8,
        temperature=0,
    )
    assert chat.stdout.rstrip("\n") == expected.choices[0].message.content
    status = cli("status")
    assert status.returncode == 0
    assert json.loads(status.stdout)["model"]["name"] == "tiny"
