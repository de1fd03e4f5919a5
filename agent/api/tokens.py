"""vLLM's /tokenize and /detokenize, on the served model's tokenizer and chat template. The
handlers are plain functions: FastAPI runs them off the event loop, as tokenizing a long
prompt takes a while."""

from __future__ import annotations

from fastapi import APIRouter

from agent.api.deps import GatewayDep
from agent.api.errors import WITH_BODY, openai_errors
from agent.protocol.tokens import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter()


@router.post("/tokenize", responses=openai_errors(WITH_BODY))
def tokenize(body: TokenizeRequest, gateway: GatewayDep) -> TokenizeResponse:
    """Messages count as a chat request with the same model (profile included) counts them."""
    ids = gateway.tokenize(gateway.render_prompt(body.to_internal()), body.add_special_tokens)
    return TokenizeResponse(tokens=ids, count=len(ids), max_model_len=gateway.max_model_len())


@router.post("/detokenize", responses=openai_errors(WITH_BODY))
def detokenize(body: DetokenizeRequest, gateway: GatewayDep) -> DetokenizeResponse:
    gateway.names.resolve(body.model)
    return DetokenizeResponse(prompt=gateway.detokenize(body.tokens))
