"""Embeddings (issue 24): /v1/embeddings, /api/embed and /api/embeddings on an encoder the
tests build, served next to the chat model, driven with the official clients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from agent.engine.embedder import Embedder
from agent.engine.types import EngineError, ErrorCode
from agent.models.catalog import load_catalog
from tests.conftest import REPO, Daemon, start_daemon
from tests.embedding_support import Encoder, build_encoder
from tests.test_models import board_with_memory

TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    return build_encoder(tmp_path_factory.mktemp("encoders") / "mini-encoder")


@pytest.fixture(scope="module")
def gateway(encoder: Encoder) -> Iterator[Daemon]:
    instance = start_daemon("--embedding-model", str(encoder.path))
    yield instance
    assert instance.stop() == 0


def openai_client(daemon: Daemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)


def test_openai_embeddings_are_the_models_pooled_normalised_vectors(
    gateway: Daemon, encoder: Encoder
) -> None:
    client = openai_client(gateway)
    reply = client.embeddings.create(model=encoder.name, input=TEXTS)  # base64 on the wire
    assert [d.index for d in reply.data] == [0, 1]
    for text, item in zip(TEXTS, reply.data, strict=True):
        vector = np.array(item.embedding)
        assert vector.shape == (encoder.dimensions,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        # mean pooling over the text's own tokens: padding in the batch changes nothing
        np.testing.assert_allclose(vector, encoder.reference(text), atol=1e-5)
    assert reply.usage.prompt_tokens == sum(len(encoder.ids(t)) for t in TEXTS)
    assert reply.model == encoder.name
    floats = client.embeddings.create(model=encoder.name, input=TEXTS[0], encoding_format="float")
    assert floats.data[0].embedding == reply.data[0].embedding  # identical input, same vector


def test_ollama_embed_and_the_older_embeddings(gateway: Daemon, encoder: Encoder) -> None:
    client = ollama.Client(host=gateway.url)
    reply = client.embed(model=encoder.name, input=TEXTS)
    assert len(reply.embeddings) == 2
    for text, vector in zip(TEXTS, reply.embeddings, strict=True):
        np.testing.assert_allclose(vector, encoder.reference(text), atol=1e-5)
    assert reply.prompt_eval_count == sum(len(encoder.ids(t)) for t in TEXTS)
    single = client.embed(model=f"{encoder.name}:latest", input=TEXTS[1])
    np.testing.assert_allclose(single.embeddings[0], reply.embeddings[1], atol=1e-6)
    older = client.embeddings(model=encoder.name, prompt=TEXTS[0])
    np.testing.assert_allclose(older.embedding, encoder.reference(TEXTS[0]), atol=1e-5)


def test_the_chat_model_serves_next_to_the_encoder(gateway: Daemon) -> None:
    client = openai_client(gateway)
    reply = client.completions.create(model="tiny", prompt="hello", max_tokens=2)
    assert reply.usage.completion_tokens == 2
    status = gateway.status()
    assert status["embedding_model"]["dimensions"] == 32
    assert status["embedding_model"]["name"] == "mini-encoder"


def test_embedding_errors_in_each_apis_style(gateway: Daemon, encoder: Encoder) -> None:
    client = openai_client(gateway)
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="no-such-encoder", input="hello")
    assert "mini-encoder" in missing.value.message  # says which model embeds here
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=encoder.name, input=[])
    long = " ".join(["hello"] * 40)  # past max_seq_length (16)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=encoder.name, input=long)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(ollama.ResponseError) as unknown:
        ollama.Client(host=gateway.url).embed(model="no-such-encoder", input="hello")
    assert unknown.value.status_code == 404
    # Ollama truncates by default, and refuses with truncate=false
    truncated = httpx.post(f"{gateway.url}/api/embed", json={"model": encoder.name, "input": long})
    assert truncated.status_code == 200 and truncated.json()["prompt_eval_count"] == 16
    refused = httpx.post(
        f"{gateway.url}/api/embed", json={"model": encoder.name, "input": long, "truncate": False}
    )
    assert refused.status_code == 400 and "error" in refused.json()


def test_without_an_embedding_model_the_routes_say_so(daemon: Daemon) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(daemon).embeddings.create(model="tiny", input="hello")
    assert "embedding_model" in raised.value.message
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=daemon.url).embeddings(model="tiny", prompt="hello")
    assert refused.value.status_code == 400 and "embedding_model" in str(refused.value)


def test_cls_pooling_without_normalisation(tmp_path: Path) -> None:
    encoder = build_encoder(tmp_path / "cls-encoder", pooling="cls", normalize=False, seed=3)
    embedder = Embedder.load(encoder.path, threads=1)
    assert (embedder.name, embedder.dimensions) == ("cls-encoder", 32)
    vectors, tokens = embedder.embed(TEXTS, truncate=False)
    assert tokens == sum(len(encoder.ids(t)) for t in TEXTS)
    for text, vector in zip(TEXTS, vectors, strict=True):
        np.testing.assert_allclose(vector, encoder.reference(text), atol=1e-5)
    assert abs(np.linalg.norm(vectors[0]) - 1.0) > 1e-3
    with pytest.raises(EngineError) as raised:
        embedder.embed([" ".join(["fox"] * 20)], truncate=False)
    assert raised.value.code is ErrorCode.CONTEXT_LENGTH_EXCEEDED


def test_the_memory_check_counts_the_embedding_model(tmp_path: Path) -> None:
    # The tiny chat model needs 9 MiB here (test_models); the encoder adds 4 MiB of weights.
    encoder = build_encoder(tmp_path / "big-encoder", hidden=1024)
    root = board_with_memory(tmp_path, available_kib=11 * 1024)
    flags = ["--hardware-root", str(root), "--memory-reserve-mb", "0", "--max-context", "4096",
             "--max-batch", "4", "--prefix-cache-entries", "0",
             "--state-dir", str(tmp_path / "state")]  # fmt: skip
    alone = start_daemon(*flags)  # the chat model alone fits
    alone.stop()
    both = subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--http-port", "0", "--provider", "cpu", *flags,
         "--embedding-model", str(encoder.path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert both.returncode == 1, both.stderr[-2000:]
    # 11 MiB less the encoder's 4: the 9 MiB chat model no longer fits
    assert "needs 9 MiB" in both.stderr and "only 7 MiB are available" in both.stderr


def test_the_catalog_offers_a_sentence_encoder() -> None:
    entry = load_catalog()["all-minilm-l6-v2"]
    assert entry.manifest["kind"] == "embedding"
    assert (entry.manifest["dimensions"], entry.manifest["pooling"]) == (384, "mean")
    assert entry.variant(None).repo == "sentence-transformers/all-MiniLM-L6-v2"
