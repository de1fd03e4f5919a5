"""The settings sections, one per concern, and the sampling profiles' shape. Every setting
has a flat name too (`flat_prefix` + field, unless renamed): see agent/settings/__init__.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agent.engine.types import Route
from agent.protocol.fields import (
    ContextLimit,
    MaxTokens,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)

Provider = Literal["auto", "cpu", "cuda", "dml", "openvino", "qnn", "webgpu"]


@dataclass(frozen=True)
class CloudEndpoint:
    """A cloud fallback: vLLM (or any OpenAI-compatible server) or Ollama."""

    kind: Literal["openai", "ollama"]
    base_url: str
    model: str | None = None  # None: the model name the client asked for
    api_key: str | None = None
    api_key_file: Path | None = None
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 20.0

    @property
    def name(self) -> str:
        parsed = urlparse(self.base_url)
        return f"{self.kind}:{parsed.hostname}:{parsed.port or ''}".rstrip(":")

    @classmethod
    def parse(cls, spec: str) -> CloudEndpoint:
        """`openai=http://host:port/v1#model` or `ollama=http://host:port` (CLI form)."""
        kind, sep, rest = spec.partition("=")
        if not sep or kind not in ("openai", "ollama"):
            raise ValueError(f"{spec!r}: expected openai=URL or ollama=URL")
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{spec!r}: the URL must start with http:// or https://")
        return cls(kind=kind, base_url=url, model=model or None)  # type: ignore[arg-type]

    def key(self) -> str | None:
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return self.api_key


class Profile(BaseModel):
    """A named alias over the model: system prompt plus default sampling (an Ollama Modelfile)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    base: str | None = Field(None, description="the Modelfile's FROM, as written")
    system: str | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    max_tokens: MaxTokens | None = None
    num_ctx: ContextLimit | None = None
    seed: int | None = None
    repetition_penalty: RepetitionPenalty | None = None
    stop: list[str] = Field(default_factory=list)
    tool_choice: Literal["auto", "none", "required"] | None = Field(
        None,
        description="when the client sends tools but no tool_choice (device control: required)",
    )


DEFAULT_PROFILES: dict[str, Profile] = {
    "reasoning": Profile(
        description="Step-by-step reasoning (like phi4-mini-reasoning)",
        system="You are a careful assistant. Think step by step, then give the answer.",
        temperature=0.3,
        top_p=0.8,
    ),
    "math": Profile(
        description="Arithmetic and word problems, low temperature",
        system="You solve math problems. Show the working briefly, then the final answer.",
        temperature=0.1,
        top_p=0.9,
    ),
    "coding": Profile(
        description="Code generation and review (like phi4-mini-coder)",
        system="You are an expert programmer. Answer with correct, idiomatic code.",
        temperature=0.5,
        top_p=0.9,
    ),
}


def default_state_dir() -> Path:
    """systemd's StateDirectory= (via $STATE_DIRECTORY), else the XDG state home."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "edge-agent"


class Section(BaseModel):
    """One concern's settings. `flat_prefix` + the field name is the flat name, unless
    `flat_renames` names it otherwise."""

    model_config = ConfigDict(extra="forbid")

    flat_prefix: ClassVar[str] = ""
    flat_renames: ClassVar[dict[str, str]] = {}

    @classmethod
    def flat_names(cls) -> dict[str, str]:
        """Field name -> flat name."""
        return {
            name: cls.flat_renames.get(name, cls.flat_prefix + name) for name in cls.model_fields
        }


class HttpSettings(Section):
    flat_prefix = "http_"

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    max_stored_responses: int = Field(
        256, ge=0, description="Responses API replies kept for previous_response_id; 0: none"
    )


class SecuritySettings(Section):
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys for every route but /health, /ready"
    )
    api_key_file: Path | None = Field(None, description="more keys, one per line")
    metrics_require_key: bool = Field(True, description="/metrics needs a key too")
    allow_insecure_bind: bool = Field(
        False, description="serve beyond loopback without API keys (behind your own proxy)"
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, description="HTTP request body cap")
    max_messages: int = Field(256, ge=1, description="messages in one request")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="cap on a request's max_tokens (default: the context)"
    )
    max_streams_per_client: int = Field(8, ge=0, description="concurrent requests; 0: no cap")
    rate_limit_per_minute: float = Field(0, ge=0, description="per client; 0: no rate limit")
    rate_limit_burst: int = Field(10, ge=1)


class EngineSettings(Section):
    provider: Provider = "auto"
    provider_fallback: bool = Field(False, description="fall back to CPU if `provider` fails")
    provider_objective: Literal["decode", "ttft"] = Field(
        "decode", description="what `auto` measures providers by: decode tokens/s or TTFT"
    )
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    intra_op_num_threads: int | None = Field(None, ge=1, description="default: usable cores")
    max_context: int = Field(4096, ge=16, description="cap on prompt + completion tokens")
    max_prompt_tokens: int | None = Field(None, ge=1, description="default: max_context")
    max_batch: int = Field(4, ge=1, le=64)
    fit_context: bool = Field(
        False, description="shorten max_context to fit in memory instead of refusing to load"
    )
    max_queue: int = Field(16, ge=0)
    max_tool_calls: int = Field(
        8, ge=1, le=64, description="most parallel tool calls in one local reply"
    )
    batch_window_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="a batch starts after this long with no new arrival"
    )
    stream_interval_ms: float = Field(
        25.0,
        ge=0.0,
        le=1000.0,
        description="hand streamed tokens over at most this often (first token and end at once)",
    )
    default_max_tokens: int = Field(512, ge=1)
    single_request_generator: bool = Field(
        True, description="a lone request runs on og.Generator (faster than og.Engine)"
    )
    prefix_cache_entries: int = Field(
        2, ge=0, le=64,
        description="Generators kept for prompt-prefix reuse; each holds a KV cache in memory",
    )  # fmt: skip
    retry_after_s: int = Field(2, ge=1, description="what a refusal for load tells clients")
    engine_stall_s: float = Field(
        120.0, gt=0, description="busy without an engine step this long: watchdog pings stop"
    )

    @property
    def kv_caches(self) -> int:
        """KV caches of max_context the engine may hold at once, which every memory check
        counts: a batch on og.Engine, and the og.Generators kept for prefix reuse."""
        kept = self.prefix_cache_entries if self.single_request_generator else 0
        return self.max_batch + kept


class ModelsSettings(Section):
    model: Path | None = Field(
        None, description="model directory; default: models_dir/active if set, else the bundled"
    )
    model_variant: str | None = None
    models_dir: Path | None = Field(
        None, description="pulled models and the `active` pointer (default: state_dir/models)"
    )
    model_watch_interval_s: float = Field(
        2.0, gt=0, description="how often the daemon checks the model pointer for a switch"
    )
    profiles: dict[str, Profile] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description="extra names -> the model, an alias or a profile"
    )
    default_model: str | None = Field(
        None, description="requests that name no model: this model, alias or profile"
    )
    keep_versions: int = Field(
        2, ge=1, description="versions of a model kept on disk by fleet updates (and rollback)"
    )
    embedding_model: Path | None = Field(
        None, description="a sentence-transformers ONNX folder, served next to the chat model"
    )

    @field_validator("embedding_model")
    @classmethod
    def _encoder_dir(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        onnx = ("model.onnx", "onnx/model.onnx")
        if not (value / "tokenizer.json").is_file() or not any((value / f).is_file() for f in onnx):
            raise ValueError("must be a folder with tokenizer.json and model.onnx (or onnx/)")
        return value.absolute()

    @field_validator("model")
    @classmethod
    def _model_dir_exists(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_dir():
            raise ValueError("must be an existing model directory")
        if not ((value / "genai_config.json").is_file() or (value / "manifest.toml").is_file()):
            raise ValueError("must contain genai_config.json or manifest.toml")
        return value.absolute()  # not resolved: `models_dir/active` must stay a pointer


class GovernorSettings(Section):
    flat_renames = {"interval_s": "governor_interval_s"}

    latency_budget_s: float = Field(30.0, gt=0, description="longest acceptable local wait")
    memory_reserve_mb: float = Field(256, ge=0, description="short of memory below this")
    memory_resume_mb: float = Field(512, ge=0, description="until this much is free again")
    cpu_enter_percent: float = Field(95, gt=0, le=100, description="100 turns it off")
    cpu_leave_percent: float = Field(80, gt=0, le=100)
    temperature_enter_c: float = 85
    temperature_leave_c: float = 80
    battery_enter_percent: float = Field(15, ge=0, le=100)
    battery_leave_percent: float = Field(25, ge=0, le=100)
    interval_s: float = Field(1.0, gt=0)
    hardware_root: Path = Field(Path("/"), description="where /proc and /sys are read")


class RoutingSettings(Section):
    """Routes and the cloud fallback: endpoints (flat name `cloud`), breaker, probes."""

    flat_renames = {"endpoints": "cloud"}

    endpoints: list[CloudEndpoint] = Field(default_factory=list, description="priority order")
    default_route: Route = "prefer_local"
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)
    probe_interval_s: float = Field(10.0, gt=0)


class MqttSettings(Section):
    flat_prefix = "mqtt_"

    url: str | None = Field(None, description="mqtt://[user:pass@]host:port or mqtts://")
    protocol: Literal["5", "3.1.1"] = "5"
    topic_prefix: str = Field("edge-agent/v1", min_length=1)
    pool: str | None = Field(None, description="also take requests from this shared pool")
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    session_expiry_s: int = Field(3600, ge=0, description="broker keeps our queue this long")
    chunk_interval_ms: int = Field(50, ge=0, description="streamed chunks are batched")
    chunk_tokens: int = Field(16, ge=1)
    dedupe_ttl_s: int = Field(600, ge=1, description="finals kept to answer redeliveries")
    max_payload_bytes: int = Field(1 << 20, ge=1024)

    @field_validator("url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        return value


class TelemetrySettings(Section):
    flat_renames = {"interval_s": "telemetry_interval_s"}

    interval_s: float = Field(60.0, gt=0, description="MQTT telemetry period")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_prompts: bool = False


SECTIONS: dict[str, type[Section]] = {
    "http": HttpSettings,
    "security": SecuritySettings,
    "engine": EngineSettings,
    "models": ModelsSettings,
    "governor": GovernorSettings,
    "routing": RoutingSettings,
    "mqtt": MqttSettings,
    "telemetry": TelemetrySettings,
}
# flat name -> (section, field) for every sectioned setting
FLAT: dict[str, tuple[str, str]] = {
    flat: (section, name)
    for section, kind in SECTIONS.items()
    for name, flat in kind.flat_names().items()
}
