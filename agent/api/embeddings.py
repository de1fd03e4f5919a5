"""Embedding routes of both APIs: OpenAI's /v1/embeddings, Ollama's /api/embed and the older
/api/embeddings; all served by the gateway's embedding model."""

from __future__ import annotations

import time

from fastapi import APIRouter

from agent.api.deps import GatewayDep
from agent.api.errors import GENERATING, ollama_errors, openai_errors
from agent.protocol.embeddings import (
    EmbedBody,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingsBody,
    EmbeddingsResponse,
    EmbeddingUsage,
    EmbedResponse,
    encode_vector,
)

router = APIRouter()


@router.post("/v1/embeddings", responses=openai_errors(GENERATING))
async def openai_embeddings(body: EmbeddingRequest, gateway: GatewayDep) -> EmbeddingResponse:
    """Like vLLM, a text past the model's length is refused rather than cut."""
    done = await gateway.embed(body.texts(), body.model, truncate=False)
    if done.vectors:
        body.check_dimensions(len(done.vectors[0]))
    data = [
        EmbeddingData(index=i, embedding=encode_vector(v, body.encoding_format))
        for i, v in enumerate(done.vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=done.prompt_tokens, total_tokens=done.prompt_tokens)
    return EmbeddingResponse(data=data, model=done.model, usage=usage)


@router.post("/api/embed", responses=ollama_errors(GENERATING))
async def embed(body: EmbedBody, gateway: GatewayDep) -> EmbedResponse:
    started = time.perf_counter_ns()
    done = await gateway.embed(body.texts(), body.model, truncate=body.truncate)
    return EmbedResponse(
        model=body.model,
        embeddings=done.vectors,
        total_duration=time.perf_counter_ns() - started,
        prompt_eval_count=done.prompt_tokens,
    )


@router.post("/api/embeddings", responses=ollama_errors(GENERATING))
async def embeddings(body: EmbeddingsBody, gateway: GatewayDep) -> EmbeddingsResponse:
    done = await gateway.embed([body.prompt], body.model, truncate=True)
    return EmbeddingsResponse(embedding=done.vectors[0])
