"""Settings, split by concern: defaults < TOML file (--config) < env EDGE_AGENT_* < CLI flags.

Each component receives its section (`http`, `security`, `engine`, `models`, `governor`,
`routing`, `mqtt`, `telemetry`) as it is. Every setting also has a flat name (`http_port`,
`max_queue`, `mqtt_url`, ...): the `EDGE_AGENT_*` environment names, the TOML keys and the
CLI flags (`--http-port`) use it, as fleets have since the first release; TOML files may
use `[section]` tables too. Configuration is read once at start-up; a bad value stops the
daemon with exit code 2 and one line per problem naming the setting (see `load_settings`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.security.api_keys import ApiKeys
from agent.settings.sections import (
    DEFAULT_PROFILES,
    FLAT,
    SECTIONS,
    CloudEndpoint,
    EngineSettings,
    GovernorSettings,
    HttpSettings,
    ModelsSettings,
    MqttSettings,
    Profile,
    RoutingSettings,
    SecuritySettings,
    TelemetrySettings,
    default_state_dir,
)

__all__ = [
    "BUNDLED_MODEL",
    "DEFAULT_PROFILES",
    "CloudEndpoint",
    "EngineSettings",
    "GovernorSettings",
    "HttpSettings",
    "ModelsSettings",
    "MqttSettings",
    "Profile",
    "RoutingSettings",
    "SecuritySettings",
    "Settings",
    "SettingsError",
    "TelemetrySettings",
    "is_table",
    "load_settings",
    "setting_fields",
]

BUNDLED_MODEL = Path(str(resources.files("agent") / "data" / "tiny"))
ENV_PREFIX = "EDGE_AGENT_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    http: HttpSettings = Field(default_factory=HttpSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    governor: GovernorSettings = Field(default_factory=GovernorSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    # Identity and lifecycle of the whole daemon
    device_id: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^/+#\s]+$")
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="profiles and other state kept across restarts",
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on SIGTERM, running requests get this long"
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    @property
    def sources(self) -> dict[str, str]:
        """Where each setting given was given: flat name -> `command line`, `environment`
        or `config file` (what `load_settings` read; defaults are not listed)."""
        return self._sources

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_names(cls, data: Any) -> Any:
        """Flat names (env, flags, TOML keys) into their sections; a flat name wins over
        the same setting in a `[section]` table."""
        if not isinstance(data, dict):
            return data
        nested: dict[str, Any] = {}
        for key, value in data.items():
            if key in FLAT:
                continue
            nested[key] = dict(value) if key in SECTIONS and isinstance(value, dict) else value
        for key, value in data.items():
            if key in FLAT:
                section, name = FLAT[key]
                table = nested.setdefault(section, {})
                if isinstance(table, dict):
                    table[name] = value
        return nested

    def __getattr__(self, name: str) -> Any:
        """Flat names read too (`settings.http_port`), for code and tests written so."""
        if name in FLAT:
            section, field = FLAT[name]
            return getattr(getattr(self, section), field)
        return super().__getattr__(name)  # type: ignore[misc]

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        """HTTP beyond loopback needs a key, unless the operator says otherwise. Keys are
        counted as the server will use them: blank keys and comment-only files are none."""
        security = self.security
        if _loopback(self.http.host) or security.allow_insecure_bind:
            return self
        try:
            keys = ApiKeys.load(
                [k.get_secret_value() for k in security.api_keys], security.api_key_file
            )
        except OSError as exc:
            raise ValueError(
                f"api_key_file={security.api_key_file} cannot be read: {exc}"
            ) from None
        if not keys.enabled:
            given = (
                " (the keys given are blank)" if security.api_keys or security.api_key_file else ""
            )
            raise ValueError(
                f"http_host={self.http.host} serves beyond this machine: set api_keys or "
                f"api_key_file{given} (or allow_insecure_bind behind your own access control)"
            )
        return self

    @model_validator(mode="after")
    def _default_model(self) -> Settings:
        models = self.models
        if models.models_dir is None:
            models.models_dir = self.state_dir / "models"
        if models.model is None:
            pointer = models.models_dir / "active"
            models.model = pointer if pointer.is_dir() else BUNDLED_MODEL
        return self

    @property
    def model_dir(self) -> Path:
        """The model directory to serve (always set once validated)."""
        assert self.models.model is not None
        return self.models.model

    @property
    def models_root(self) -> Path:
        """Where pulled models and the `active` pointer live (always set once validated)."""
        assert self.models.models_dir is not None
        return self.models.models_dir

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
        return init_settings, FlatEnvSource(settings_cls), TomlConfigSettingsSource(settings_cls)


def setting_fields() -> dict[str, FieldInfo]:
    """Every setting by its flat name: the sections' and the daemon-wide ones."""
    fields = {flat: SECTIONS[s].model_fields[n] for flat, (s, n) in FLAT.items()}
    fields.update(
        (name, info) for name, info in Settings.model_fields.items() if name not in SECTIONS
    )
    return fields


def is_table(field: FieldInfo) -> bool:
    """A list or mapping: JSON in the environment, a table in TOML, no CLI flag."""
    annotation = field.annotation
    origins = {get_origin(annotation), *(get_origin(a) for a in get_args(annotation))}
    return bool(origins & {list, dict})


class FlatEnvSource(PydanticBaseSettingsSource):
    """`EDGE_AGENT_<FLAT NAME>` for every setting; lists and tables are JSON."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ reads every flat name at once

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for flat, info in setting_fields().items():
            raw = os.environ.get(ENV_PREFIX + flat.upper())
            if raw is None:
                continue
            found[flat] = _json_or_text(raw) if is_table(info) else raw
        return found


def _json_or_text(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw  # validation then names the setting and the value


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
    """Build Settings from every source; `overrides` (flat names, from CLI flags) that are
    None are ignored."""
    if config_file is not None and not config_file.is_file():
        raise SettingsError([f"invalid setting config={config_file}: file not found"])
    flags = {key: value for key, value in overrides.items() if value is not None}

    class _Settings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    try:
        settings = _Settings(**flags)
    except ValidationError as exc:
        raise SettingsError([_describe(error) for error in exc.errors()]) from None
    sources = dict.fromkeys(_toml_names(config_file), "config file")
    sources.update(dict.fromkeys(FlatEnvSource(Settings)(), "environment"))
    sources.update(dict.fromkeys(flags, "command line"))
    settings._sources = sources
    return settings


def _toml_names(config_file: Path | None) -> list[str]:
    """The flat names a TOML file sets, at the top or in `[section]` tables."""
    if config_file is None:
        return []
    names: list[str] = []
    for key, value in tomllib.loads(config_file.read_text()).items():
        if key in SECTIONS and isinstance(value, dict):
            names += [SECTIONS[key].flat_names().get(str(k)) or str(k) for k in value]
        else:
            names.append(key)
    return names


def flat_name(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the flat name the user wrote (`http_port`)."""
    if len(loc) >= 2 and loc[0] in SECTIONS and isinstance(loc[1], str):
        flat = SECTIONS[str(loc[0])].flat_names().get(loc[1])
        if flat is not None:
            return ".".join([flat, *(str(p) for p in loc[2:])])
    return ".".join(str(part) for part in loc)


def _describe(error: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    loc = tuple(error["loc"])
    if not loc or (len(loc) == 1 and loc[0] in SECTIONS):  # a rule across settings
        return f"invalid settings: {message}"
    name = flat_name(loc)
    value = error.get("input")
    shown = "<missing>" if value is None else value
    if "key" in name or "password" in name:
        shown = "<hidden>"
    return f"invalid setting {name}={shown!s}: {message}"
