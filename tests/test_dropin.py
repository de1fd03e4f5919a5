"""Drop-in for vLLM, Ollama and FastAPI-ONNX deployments: their clients work unchanged
against edge-agent, with only the host and port changed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from agent.settings import DEFAULT_PROFILES
from tests.conftest import REPO, TINY, Daemon, start_daemon

ASK = [{"role": "user", "content": "Hello, gateway!"}]
MANIFEST = f"""
name = "phi-4-mini-instruct"
hf_id = "microsoft/Phi-4-mini-instruct"
ollama_tags = ["phi4-mini"]

[[variants]]
name = "cpu-int4"
provider = "cpu"
path = "{TINY / "cpu-int4"}"
"""
ALIASES = {"gpt-4o-mini": "phi4-mini", "phi4-mini-reasoning": "reasoning"}
MODELFILE = '''# the reasoning variant teams run on Ollama
FROM phi4-mini
PARAMETER temperature 0.3
PARAMETER top_p 0.8
PARAMETER num_ctx 64
PARAMETER stop "<|end|>"
PARAMETER stop "###"
PARAMETER mirostat 2
SYSTEM """You reason step by step.
Then you answer."""
TEMPLATE """{{ .Prompt }}"""
ADAPTER ./lora.gguf
'''


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny weights under a manifest that says where they came from, as a pulled
    Phi-4-mini's manifest does."""
    directory = tmp_path_factory.mktemp("phi4")
    (directory / "manifest.toml").write_text(MANIFEST)
    return directory


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("state")


def start(model_dir: Path, state_dir: Path) -> Daemon:
    return start_daemon(
        "--model", str(model_dir), "--state-dir", str(state_dir),
        env={"EDGE_AGENT_MODEL_ALIASES": json.dumps(ALIASES)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def gateway(model_dir: Path, state_dir: Path) -> Iterator[Daemon]:
    instance = start(model_dir, state_dir)
    yield instance
    instance.stop()


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


# ---- model aliases --------------------------------------------------------------------------


def test_the_model_answers_to_its_hf_id_ollama_tags_and_configured_aliases(
    gateway: Daemon,
) -> None:
    vllm_client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
    names = {m.id for m in vllm_client.models.list()}
    expected = {"phi-4-mini-instruct", "microsoft/Phi-4-mini-instruct", "phi4-mini",
                "phi4-mini:latest", *ALIASES, *DEFAULT_PROFILES}  # fmt: skip
    assert expected <= names
    for name in ("microsoft/Phi-4-mini-instruct", "phi4-mini", "phi4-mini:latest", "gpt-4o-mini"):
        reply = vllm_client.chat.completions.create(model=name, messages=ASK, max_tokens=3)
        assert reply.model == name and reply.usage.completion_tokens == 3
    tags = {m.model for m in ollama.Client(host=gateway.url).list().models}
    assert {"phi4-mini:latest", "gpt-4o-mini:latest", "reasoning:latest"} <= tags


def test_an_alias_of_a_profile_uses_the_profile(gateway: Daemon) -> None:
    shown = ollama.Client(host=gateway.url).show("phi4-mini-reasoning")
    assert f'SYSTEM """{DEFAULT_PROFILES["reasoning"].system}"""' in shown.modelfile
    assert "temperature 0.3" in shown.parameters


def test_an_unknown_model_is_404_listing_the_names(gateway: Daemon) -> None:
    vllm_client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
    with pytest.raises(openai.NotFoundError) as missing:
        vllm_client.chat.completions.create(model="llama3.2", messages=ASK)
    error = missing.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "phi4-mini" in error["message"] and "microsoft/Phi-4-mini-instruct" in error["message"]
    with pytest.raises(ollama.ResponseError) as ollama_missing:
        ollama.Client(host=gateway.url).chat(model="llama3.2", messages=ASK)
    assert ollama_missing.value.status_code == 404


# ---- Modelfiles and profiles ----------------------------------------------------------------


def test_modelfile_import_reports_what_it_ignores_and_the_daemon_sees_it(
    gateway: Daemon, model_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "Modelfile"
    path.write_text(MODELFILE)
    imported = cli("profiles", "import", "phi4-steps", "-f", str(path), "--state-dir",
                   str(state_dir), "--config", str(_config(tmp_path, model_dir)))  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    for ignored in ("PARAMETER mirostat", "TEMPLATE", "ADAPTER"):
        assert f"ignored {ignored}" in imported.stderr
    # The running daemon shares the state directory and sees the new profile.
    talk = ollama.Client(host=gateway.url)
    assert "phi4-steps:latest" in {m.model for m in talk.list().models}
    shown = talk.show("phi4-steps")
    assert 'SYSTEM """You reason step by step.\nThen you answer."""' in shown.modelfile
    for line in ("temperature 0.3", "top_p 0.8", "num_ctx 64", 'stop "<|end|>"', 'stop "###"'):
        assert line in shown.parameters
    assert shown.modelfile.startswith("FROM phi4-mini\n")
    # num_ctx 64 caps this profile's context.
    with pytest.raises(ollama.ResponseError) as too_long:
        talk.chat(model="phi4-steps", messages=[{"role": "user", "content": "word " * 40}])
    assert too_long.value.status_code == 400 and "64" in str(too_long.value)
    listed = cli("profiles", "list", "--state-dir", str(state_dir),
                 "--config", str(_config(tmp_path, model_dir)))  # fmt: skip
    assert "phi4-steps" in listed.stdout and "microsoft/Phi-4-mini-instruct" in listed.stdout
    shown_cli = cli("profiles", "show", "phi4-steps", "--state-dir", str(state_dir),
                    "--config", str(_config(tmp_path, model_dir)))  # fmt: skip
    assert "PARAMETER num_ctx 64" in shown_cli.stdout
    assert cli("profiles", "remove", "phi4-steps", "--state-dir", str(state_dir)).returncode == 0
    assert "phi4-steps:latest" not in {m.model for m in talk.list().models}


def _config(tmp_path: Path, model_dir: Path) -> Path:
    config = tmp_path / "edge-agent.toml"
    config.write_text(f'model = "{model_dir}"\n')
    return config


def test_ollama_create_show_delete_and_persistence(model_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start(model_dir, state)
    try:
        talk = ollama.Client(host=first.url)
        progress = talk.create(
            model="phi4-coder", from_="phi4-mini", system="You write Python.",
            parameters={"temperature": 0.5, "top_p": 0.9, "num_gpu": 99}, stream=True,
        )  # fmt: skip
        statuses = [part.status for part in progress]
        assert statuses[-1] == "success"
        assert [s.split(":")[0] for s in statuses[:-1]] == ["ignored PARAMETER num_gpu"]
        # The older shape: Modelfile text in `modelfile`, progress streamed as NDJSON.
        modelfile = 'FROM phi4-coder\nSYSTEM "Be terse."\n'
        older = httpx.post(f"{first.url}/api/create", timeout=30,
                           json={"name": "phi4-terse", "modelfile": modelfile})  # fmt: skip
        statuses = [json.loads(line) for line in older.text.splitlines()]
        assert statuses[-1] == {"status": "success"}
        terse = talk.show("phi4-terse")
        assert 'SYSTEM """Be terse."""' in terse.modelfile
        assert "temperature 0.5" in terse.parameters  # inherited from phi4-coder
        reply = talk.chat(model="phi4-coder", messages=ASK, options={"num_predict": 4})
        assert reply.eval_count == 4
        too_hot = {"from_": "phi4-mini", "parameters": {"temperature": 9}}
        for bad, status in (({"from_": "llama3.2"}, 404), (too_hot, 400)):
            with pytest.raises(ollama.ResponseError) as refused:
                talk.create(model="broken", stream=False, **bad)
            assert refused.value.status_code == status
    finally:
        first.stop()
    second = start(model_dir, state)  # a restart keeps the profiles
    try:
        talk = ollama.Client(host=second.url)
        assert 'SYSTEM """You write Python."""' in talk.show("phi4-coder").modelfile
        talk.delete("phi4-coder")
        assert "phi4-coder:latest" not in {m.model for m in talk.list().models}
        with pytest.raises(ollama.ResponseError) as gone:
            talk.delete("phi4-coder")
        assert gone.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as configured:
            talk.delete("reasoning")
        assert configured.value.status_code == 400
    finally:
        second.stop()


# ---- Ollama options and vLLM extras ---------------------------------------------------------


def test_ollama_options_are_honoured_and_unknown_ones_only_warned(gateway: Daemon) -> None:
    talk = ollama.Client(host=gateway.url)
    reply = talk.generate(model="phi4-mini", prompt="Hello", options={
        "num_predict": 6, "temperature": 0.7, "top_k": 20, "top_p": 0.9, "repeat_penalty": 1.1,
        "seed": 7, "mirostat": 2, "num_gpu": 1})  # fmt: skip
    assert reply.eval_count == 6
    assert any(
        e.get("event") == "ollama options ignored" and e["options"] == ["mirostat", "num_gpu"]
        for e in gateway.logs
    )
    greedy = talk.generate(
        model="phi4-mini", prompt="Hello", options={"num_predict": 12, "temperature": 0}
    )
    stop = greedy.response[4:7]
    options = {"num_predict": 12, "temperature": 0, "stop": [stop]}
    stopped = talk.generate(model="phi4-mini", prompt="Hello", options=options)
    assert stopped.response == greedy.response[: greedy.response.index(stop)]
    with pytest.raises(ollama.ResponseError) as too_long:
        talk.generate(model="phi4-mini", prompt="word " * 40, options={"num_ctx": 32})
    assert too_long.value.status_code == 400
    assert talk.generate(model="phi4-mini", prompt="", keep_alive=0).done_reason == "unload"
    assert talk.generate(model="phi4-mini", prompt="", keep_alive="5m").done_reason == "load"
    with_system = talk.generate(model="phi4-mini", prompt="Hello", system="Be brief.",
                                options={"num_predict": 2}, keep_alive="10m")  # fmt: skip
    plain = talk.generate(model="phi4-mini", prompt="Hello", options={"num_predict": 2})
    assert with_system.prompt_eval_count > plain.prompt_eval_count
    raw = talk.generate(model="phi4-mini", prompt="Hello", raw=True, options={"num_predict": 2})
    assert raw.prompt_eval_count < plain.prompt_eval_count


def test_vllm_extras_are_accepted_or_refused_clearly(gateway: Daemon) -> None:
    vllm_client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none")
    reply = vllm_client.chat.completions.create(
        model="microsoft/Phi-4-mini-instruct", messages=ASK, max_tokens=30,
        extra_body={"top_k": 20, "repetition_penalty": 1.1, "min_tokens": 10,
                    "ignore_eos": True, "skip_special_tokens": True},
    )  # fmt: skip
    assert reply.usage.completion_tokens == 30
    for extra, param in (({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                         ({"top_logprobs": 3}, "top_logprobs"),
                         ({"ignore_eos": True}, "ignore_eos")):  # fmt: skip
        body = {"model": "phi4-mini", "messages": ASK, **extra}
        refused = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == param
