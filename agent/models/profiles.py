"""Model names the daemon answers to, and profiles (named system prompt + sampling).

A client's `model` may be the active model's name, one of its aliases (manifest
`aliases`, the Hugging Face id it came from, Ollama-style tags, `NAME:latest`), a name from
the `model_aliases` setting, or a profile: from the configuration, or created at run time
from a Modelfile and kept in the state directory.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Literal, TypeVar

from pydantic import ValidationError

from agent.engine.types import (
    ChatRequest,
    EngineError,
    ErrorCode,
    Message,
    SamplingParams,
    ToolChoice,
)
from agent.models.info import ModelInfo
from agent.protocol.modelfile import Modelfile
from agent.settings import Profile
from agent.state.profiles import ProfileStore

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")


class ModelNames:
    """Resolves a client's `model` to the active model, optionally through a profile."""

    def __init__(
        self,
        info: ModelInfo,
        profiles: dict[str, Profile],
        aliases: dict[str, str] | None = None,
        store: ProfileStore | None = None,
        default: str | None = None,
    ) -> None:
        self.model = info.name
        self.default = default or info.name  # what a request without `model` asks for
        manifest = info.manifest
        tags = [str(t) for t in manifest.get("ollama_tags", ())]
        names = [*info.aliases, manifest.get("hf_id"), *tags, *(f"{t}:latest" for t in tags)]
        self.aliases = tuple(dict.fromkeys(n for n in names if n and n != info.name))
        self.configured = profiles
        self.extra_aliases = dict(aliases or {})
        self.store = store

    @property
    def profiles(self) -> dict[str, Profile]:
        """Configured profiles, then stored ones (a stored profile wins on a name clash)."""
        stored = self.store.all() if self.store is not None else {}
        return {**self.configured, **stored}

    def listed(self) -> list[str]:
        return [self.model, *self.aliases, *self.extra_aliases, *self.profiles]

    def resolve(self, name: str | None) -> Profile | None:
        """The profile `name` selects (None for the plain model); 404 for unknown names.
        No name: the `default_model` setting, else the model itself."""
        name = name or self.default
        target = self.extra_aliases.get(name, self.extra_aliases.get(_base(name), name))
        found = self._lookup(target)
        if found is False:
            where = f"{name!r} (an alias of {target!r})" if target != name else repr(name)
            raise EngineError(
                ErrorCode.MODEL_NOT_FOUND,
                f"The model {where} does not exist. Available: {', '.join(self.listed())}",
                param="model",
            )
        return found

    def _lookup(self, name: str) -> Profile | Literal[False] | None:
        """A profile, None for the model itself, False when the name is unknown."""
        profiles = self.profiles
        for candidate in (name, _base(name)):
            if candidate in profiles:
                return profiles[candidate]
        if name in (self.model, *self.aliases) or _base(name) in (self.model, *self.aliases):
            return None
        return False

    def create(self, name: str, modelfile: Modelfile) -> Profile:
        """A new stored profile from a Modelfile; FROM may name the model or a profile."""
        name = _base(name)
        if not PROFILE_NAME.match(name):
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"{name!r} is not a valid name: letters, digits and . _ : / - (64 at most)",
                param="model",
            )
        if name in (self.model, *self.aliases) or name in self.extra_aliases:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"{name!r} names the model itself or an alias",
                param="model",
            )
        if self.store is None:
            raise EngineError(
                ErrorCode.INVALID_REQUEST, "No state directory: profiles cannot be saved"
            )
        base = modelfile.base or self.model
        try:
            inherited = self.resolve(base)
        except EngineError:
            raise EngineError(
                ErrorCode.MODEL_NOT_FOUND,
                f"FROM {base}: this gateway serves {self.model!r}; FROM must name it, an alias "
                f"or a profile ({', '.join(self.listed())})",
                param="from",
            ) from None
        fields = inherited.model_dump(exclude_defaults=True) if inherited else {}
        fields.pop("description", None)
        if modelfile.system is not None:
            fields["system"] = modelfile.system
        fields.update(modelfile.parameters)
        fields["base"] = base
        try:
            profile = Profile.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise EngineError(
                ErrorCode.INVALID_REQUEST, f"PARAMETER {field}: {first['msg']}", param=field
            ) from None
        self.store.save(name, profile)
        return profile

    def remove(self, name: str) -> None:
        name = _base(name)
        if self.store is not None and self.store.remove(name):
            return
        if name in self.configured:
            raise EngineError(
                ErrorCode.INVALID_REQUEST,
                f"{name!r} is defined in the configuration; remove it there",
                param="model",
            )
        raise EngineError(
            ErrorCode.MODEL_NOT_FOUND, f"No profile {name!r} to delete", param="model"
        )


def _base(name: str) -> str:
    return name.removesuffix(":latest")


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
        seed=_first(sampling.seed, profile.seed),
        repetition_penalty=_first(sampling.repetition_penalty, profile.repetition_penalty),
        stop=sampling.stop or tuple(profile.stop),
        context_limit=_first(sampling.context_limit, profile.num_ctx),
        min_tokens=sampling.min_tokens,
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
