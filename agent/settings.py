"""Settings: defaults < TOML file (--config) < env EDGE_AGENT_* < CLI flags.

Configuration is read once at start-up; a bad value stops the daemon with exit code 2 and
one line per problem naming the setting, the value and what is allowed (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.engine.cloud import CloudEndpoint
from agent.engine.types import Route
from agent.security.api_keys import ApiKeys

# Package data (agent/data), found wherever the package is installed: the smoke-test model
# that serves when no other is set up. onnxruntime-genai needs a real directory.
BUNDLED_MODEL = Path(str(resources.files("agent") / "data" / "tiny"))

Provider = Literal["auto", "cpu", "cuda", "dml", "openvino", "qnn", "webgpu"]


class Profile(BaseModel):
    """A named alias over the model: system prompt plus default sampling (an Ollama Modelfile)."""

    model_config = {"extra": "forbid"}

    description: str = ""
    base: str | None = Field(None, description="the Modelfile's FROM, as written")
    system: str | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    num_ctx: int | None = Field(None, ge=16, description="cap on prompt + completion tokens")
    seed: int | None = None
    repetition_penalty: float | None = Field(None, gt=0.0)
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", extra="forbid")

    # HTTP
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys for every route but /health, /ready"
    )
    api_key_file: Path | None = Field(None, description="more keys, one per line")
    metrics_require_key: bool = Field(True, description="/metrics needs a key too")
    allow_insecure_bind: bool = Field(
        False, description="serve beyond loopback without API keys (behind your own proxy)"
    )
    # Limits (each refusal names its limit)
    max_request_bytes: int = Field(1 << 20, ge=1024, description="HTTP request body cap")
    max_messages: int = Field(256, ge=1, description="messages in one request")
    max_prompt_tokens: int | None = Field(None, ge=1, description="default: max_context")
    max_completion_tokens: int | None = Field(
        None, ge=1, description="cap on a request's max_tokens (default: the context)"
    )
    max_streams_per_client: int = Field(8, ge=0, description="concurrent requests; 0: no cap")
    rate_limit_per_minute: float = Field(0, ge=0, description="per client; 0: no rate limit")
    rate_limit_burst: int = Field(10, ge=1)
    mqtt_max_payload_bytes: int = Field(1 << 20, ge=1024)
    # Model and engine
    model: Path | None = Field(
        None, description="model directory; default: models_dir/active if set, else the bundled"
    )
    model_variant: str | None = None
    provider: Provider = "auto"
    provider_fallback: bool = Field(False, description="fall back to CPU if `provider` fails")
    provider_options: dict[str, dict[str, str]] = Field(default_factory=dict)
    intra_op_num_threads: int | None = Field(None, ge=1, description="default: usable cores")
    max_context: int = Field(4096, ge=16, description="cap on prompt + completion tokens")
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
    retry_after_s: int = Field(2, ge=1)
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, running requests get this long"
    )
    engine_stall_s: float = Field(
        120.0, gt=0, description="busy without an engine step this long: watchdog pings stop"
    )
    profiles: dict[str, Profile] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description="extra names -> the model, an alias or a profile"
    )
    default_model: str | None = Field(
        None, description="requests that name no model: this model, alias or profile"
    )
    state_dir: Path = Field(
        default_factory=lambda: default_state_dir(),
        description="profiles and other state kept across restarts",
    )
    models_dir: Path | None = Field(
        None, description="pulled models and the `active` pointer (default: state_dir/models)"
    )
    model_watch_interval_s: float = Field(
        2.0, gt=0, description="how often the daemon checks the model pointer for a switch"
    )
    # Routing and cloud fallback
    cloud: list[CloudEndpoint] = Field(default_factory=list, description="in priority order")
    default_route: Route = "prefer_local"
    latency_budget_s: float = Field(30.0, gt=0, description="longest acceptable local wait")
    memory_reserve_mb: float = Field(256, ge=0, description="short of memory below this")
    memory_resume_mb: float = Field(512, ge=0, description="until this much is free again")
    cpu_enter_percent: float = Field(95, gt=0, le=100, description="100 turns it off")
    cpu_leave_percent: float = Field(80, gt=0, le=100)
    temperature_enter_c: float = 85
    temperature_leave_c: float = 80
    battery_enter_percent: float = Field(15, ge=0, le=100)
    battery_leave_percent: float = Field(25, ge=0, le=100)
    governor_interval_s: float = Field(1.0, gt=0)
    hardware_root: Path = Field(Path("/"), description="where /proc and /sys are read")
    breaker_failures: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(30.0, gt=0)
    probe_interval_s: float = Field(10.0, gt=0)
    # MQTT (off unless mqtt_url is set)
    mqtt_url: str | None = Field(None, description="mqtt://[user:pass@]host:port or mqtts://")
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_topic_prefix: str = Field("edge-agent/v1", min_length=1)
    mqtt_pool: str | None = Field(None, description="also take requests from this shared pool")
    mqtt_password_file: Path | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_keepalive_s: int = Field(30, ge=5, le=3600)
    mqtt_session_expiry_s: int = Field(3600, ge=0, description="broker keeps our queue this long")
    mqtt_chunk_interval_ms: int = Field(50, ge=0, description="streamed chunks are batched")
    mqtt_chunk_tokens: int = Field(16, ge=1)
    mqtt_dedupe_ttl_s: int = Field(600, ge=1, description="finals kept to answer redeliveries")
    telemetry_interval_s: float = Field(60.0, gt=0, description="MQTT telemetry period")
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^/+#\s]+$")
    # Logging
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_prompts: bool = False

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

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        """HTTP beyond loopback needs a key, unless the operator says otherwise. Keys are
        counted as the server will use them: blank keys and comment-only files are none."""
        if _loopback(self.http_host) or self.allow_insecure_bind:
            return self
        try:
            keys = ApiKeys.load([k.get_secret_value() for k in self.api_keys], self.api_key_file)
        except OSError as exc:
            raise ValueError(f"api_key_file={self.api_key_file} cannot be read: {exc}") from None
        if not keys.enabled:
            given = " (the keys given are blank)" if self.api_keys or self.api_key_file else ""
            raise ValueError(
                f"http_host={self.http_host} serves beyond this machine: set api_keys or "
                f"api_key_file{given} (or allow_insecure_bind behind your own access control)"
            )
        return self

    @model_validator(mode="after")
    def _default_model(self) -> Settings:
        if self.models_dir is None:
            self.models_dir = self.state_dir / "models"
        if self.model is None:
            pointer = self.models_dir / "active"
            self.model = pointer if pointer.is_dir() else BUNDLED_MODEL
        return self

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: CLI flags (init kwargs), then env, then the TOML file.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class SettingsError(Exception):
    """Start-up configuration is invalid; `lines` has one readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from every source; CLI `overrides` that are None are ignored."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError([f"invalid setting config={config_file}: file not found"])
    flags = {key: value for key, value in overrides.items() if value is not None}

    class _Settings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        return _Settings(**flags)
    except ValidationError as exc:
        raise SettingsError([_describe(error) for error in exc.errors()]) from None


def _describe(error: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule across settings: its message names them (never the input)
        return f"invalid settings: {message}"
    name = ".".join(str(part) for part in error["loc"])
    value = error.get("input")
    shown = "<missing>" if value is None else value
    if "key" in name or "password" in name:
        shown = "<hidden>"
    return f"invalid setting {name}={shown!s}: {message}"
