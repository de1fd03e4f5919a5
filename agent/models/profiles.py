"""Model names the daemon answers to, and profiles (named system prompt + sampling)."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from agent.engine.types import ChatRequest, EngineError, Message, SamplingParams, ToolChoice
from agent.models.local import ModelInfo
from agent.settings import Profile


class ModelNames:
    """Resolves a client's `model` to the active model, optionally through a profile."""

    def __init__(self, info: ModelInfo, profiles: dict[str, Profile]) -> None:
        self.model = info.name
        self.aliases = tuple(a for a in info.aliases if a != info.name)
        self.profiles = profiles

    def listed(self) -> list[str]:
        return [self.model, *self.aliases, *self.profiles]

    def resolve(self, name: str) -> Profile | None:
        """The profile `name` selects (None for the plain model); 404 for unknown names."""
        if name in self.profiles:
            return self.profiles[name]
        base = name.removesuffix(":latest")
        if base in self.profiles:
            return self.profiles[base]
        if name in (self.model, *self.aliases) or base == self.model:
            return None
        raise EngineError(
            "model_not_found",
            f"The model {name!r} does not exist. Available: {', '.join(self.listed())}",
            status=404,
            param="model",
        )


def apply_profile(request: ChatRequest, profile: Profile | None) -> ChatRequest:
    """Fill what the client left unset from the profile; the client's values win."""
    if profile is None:
        return request
    sampling = request.sampling
    merged = SamplingParams(
        max_tokens=_first(sampling.max_tokens, profile.max_tokens),
        temperature=_first(sampling.temperature, profile.temperature),
        top_p=_first(sampling.top_p, profile.top_p),
        top_k=_first(sampling.top_k, profile.top_k),
        seed=sampling.seed,
        repetition_penalty=_first(sampling.repetition_penalty, profile.repetition_penalty),
        stop=sampling.stop or tuple(profile.stop),
    )
    messages = request.messages
    if profile.system and request.prompt is None and not any(m.role == "system" for m in messages):
        messages = (Message("system", profile.system), *messages)
    tool_choice = request.tool_choice
    if tool_choice is None and profile.tool_choice is not None:
        tool_choice = ToolChoice(profile.tool_choice)
    return replace(request, messages=messages, sampling=merged, tool_choice=tool_choice)


T = TypeVar("T")


def _first(value: T | None, fallback: T | None) -> T | None:
    return value if value is not None else fallback
