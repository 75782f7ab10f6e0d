"""Every knob of the server, in one pydantic-settings object.

Read from the environment (prefix `STREAMWATCH_`, nested groups with `__`, e.g.
`STREAMWATCH_ENGINE__MAX_BATCH=512`) and from an optional TOML file named by
`STREAMWATCH_CONFIG`; constructor arguments win over both, then the environment, then the file.
Each component is handed only its own group.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Group):
    """Streams whose id matches `pattern` (a glob; `pumps-*`) are bound to `model`."""

    pattern: str
    model: str


class ThresholdOverride(_Group):
    """Streams whose id matches `pattern` use `threshold` instead of their model's."""

    pattern: str
    threshold: float = Field(gt=0.0, lt=1.0)


class ModelSettings(_Group):
    dir: Path = Field(BUNDLED_MODELS_DIR, description="Every subfolder with a card.json is loaded.")
    default: str = Field("default", description="Model for streams no route matches.")
    routes: list[Route] = Field(default_factory=list, description="First match wins.")
    intra_op_threads: int = Field(1, ge=1, description="ONNX Runtime threads per model call.")
    spin: bool = Field(False, description="Let ORT threads spin between calls.")


class EngineSettings(_Group):
    max_batch: int = Field(1024, ge=1, description="Readings per model call, at most.")
    max_wait_ms: float = Field(1.0, ge=0.0, description="How long a batch waits to fill.")
    max_queued: int = Field(200_000, ge=1, description="Readings waiting, at most; then 503.")


class StateSettings(_Group):
    max_streams: int = Field(1_000_000, ge=1, description="Live streams per model, at most.")
    initial_capacity: int = Field(1024, ge=1, description="Slots preallocated per model.")
    ttl_s: float | None = Field(None, gt=0, description="Forget streams idle this long; off.")


class NormalizationSettings(_Group):
    warmup_n: int = Field(100, ge=1, description="Readings before a stream may alert.")
    alpha: float = Field(0.002, gt=0.0, lt=1.0, description="Tracking weight after warm-up.")
    clip_sigma: float = Field(5.0, gt=0.0, description="Outlier clip when tracking.")


class ScoringSettings(_Group):
    window: int = Field(15, ge=1, le=512, description="Readings whose surprise is averaged.")
    horizon: int = Field(
        4000, ge=2, description="Readings a stream's distribution of that average remembers."
    )
    settle: int = Field(20, ge=0, description="Readings learned after warm-up before scoring.")
    min_var: float = Field(1e-2, gt=0.0, description="Floor of that distribution's variance.")
    range_margin: float = Field(
        0.02, ge=0.0, description="A value beyond the seen range by this share of it ..."
    )
    range_tail: float = Field(
        1e-12, gt=0.0, le=1.0, description="... has this tail probability (1: off)."
    )
    day_bins: int = Field(24, ge=0, le=1440, description="Time-of-day profile bins; 0: off.")
    day_alpha: float = Field(
        0.05, ge=1 / 255, lt=1.0, description="Weight of a new day in a bin."
    )
    level_window: int = Field(
        30, ge=0, le=512, description="Values whose mean the level test compares; 0: off."
    )
    quiet_tail: bool = Field(
        True, description="Also alert on a forecast surprise far below its usual (gone flat)."
    )
    learn_clip: float = Field(
        8.0, ge=0.0, description="What the score learns is clipped to this many sd; 0: off."
    )
    forecast_weight: float = Field(
        0.75, gt=0.0, description="The forecast test's z is scaled by this before its tail."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="Per-model threshold, overriding the card's."
    )
    stream_thresholds: list[ThresholdOverride] = Field(
        default_factory=list, description="Per-stream threshold by glob; first match wins."
    )


class AlertSettings(_Group):
    k: int = Field(1, ge=1, description="An alert opens at k scores over threshold ...")
    m: int = Field(3, ge=1, le=32, description="... among the last m readings.")
    close_factor: float = Field(10.0, ge=1.0, description="Hysteresis, in tail probability.")
    cooldown: int = Field(100, ge=0, description="Readings of quiet after an alert closes.")
    subscriber_queue: int = Field(1000, ge=1, description="Events buffered per subscriber.")
    max_subscribers: int = Field(1000, ge=1, description="Live alert subscribers, at most.")
    history_limit: int = Field(100_000, ge=1, description="Alerts kept in the log.")


class TimeSettings(_Group):
    gap_factor: float = Field(100.0, gt=1.0, description="A gap is this many typical intervals.")
    gap_policy: Literal["rewarm", "ignore"] = Field(
        "rewarm", description="rewarm: reset the stream's state and warm up again."
    )


class LimitSettings(_Group):
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Request body, at most.")
    max_readings_per_request: int = Field(10_000, ge=1, description="Per request or frame.")
    max_frame_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="WebSocket frame; 1009.")
    max_channels: int = Field(256, ge=1, description="Values in one reading, at most.")
    max_stream_id_length: int = Field(200, ge=1, description="Characters in a stream id.")


Role = Literal["ingest", "read", "admin"]


class ApiKey(_Group):
    """One API key: the key itself, or better the sha256 hex of it (`sha256sum` of the key)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="Shown in logs, not the key.")
    roles: list[Role] = Field(min_length=1, description="admin may do everything.")
    key: SecretStr | None = Field(None, min_length=16, description="The key, in plain text.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="Its sha256, hex.")

    @model_validator(mode="after")
    def _one_form(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError(f"API key {self.name!r}: give exactly one of `key` or `sha256`")
        return self


class SecuritySettings(_Group):
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description='JSON list of {"name", "roles" (of ingest, read, admin), "key" or "sha256"}; '
        "none: open, and bound to 127.0.0.1 only.",
    )
    rate_per_s: float | None = Field(
        1000.0, gt=0.0, description="Requests (and WebSocket frames) per second per key."
    )
    rate_burst: int = Field(2000, ge=1, description="Requests a key may make at once.")

    @model_validator(mode="after")
    def _unique_names(self) -> SecuritySettings:
        names = [k.name for k in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("API key names must be unique")
        return self


class LogSettings(_Group):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    json_lines: bool = Field(True, description="One JSON object per line; else plain text.")
    access: bool = Field(True, description="One line per request, with its id.")


class StoreSettings(_Group):
    """Where alerts and stream state persist (see `service.store`)."""

    backend: Literal["sqlite", "redis", "memory"] = Field(
        "sqlite",
        description="sqlite: alert log + state snapshots in data_dir; redis: shared by replicas; "
        "memory: nothing kept (tests).",
    )
    snapshot_interval_s: float = Field(
        30.0, gt=0.0, description="sqlite: seconds between state snapshots (and one at shutdown)."
    )
    sqlite_synchronous: Literal["NORMAL", "FULL"] = Field(
        "FULL", description="FULL survives power loss; NORMAL (WAL) only a crashed process."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="redis: the server to use.")
    redis_prefix: str = Field(
        "streamwatch:", min_length=1, description="redis: prefix of every key written."
    )
    redis_timeout_s: float = Field(2.0, gt=0.0, description="redis: connect and command timeout.")


class ServerSettings(_Group):
    host: str = Field("127.0.0.1", description="Bind address.")
    port: int = Field(8000, ge=0, le=65535, description="Port.")
    workers: int = Field(1, ge=1, description="Processes; each keeps its own streams.")
    gc_thresholds: tuple[int, int, int] = Field(
        (10_000, 50, 50),
        description="The server's garbage-collector thresholds (Python's are 700, 10, 10): a "
        "batch allocates thousands of objects at once, and the default then collects so often "
        "that it costs a third of the time.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STREAMWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    data_dir: Path = Field(Path("data"), description="Where the server writes what it keeps.")
    model: ModelSettings = ModelSettings()
    engine: EngineSettings = EngineSettings()
    state: StateSettings = StateSettings()
    normalization: NormalizationSettings = NormalizationSettings()
    scoring: ScoringSettings = ScoringSettings()
    alerts: AlertSettings = AlertSettings()
    time: TimeSettings = TimeSettings()
    limits: LimitSettings = LimitSettings()
    server: ServerSettings = ServerSettings()
    security: SecuritySettings = SecuritySettings()
    log: LogSettings = LogSettings()
    store: StoreSettings = StoreSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("STREAMWATCH_CONFIG")
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if config_file:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)),)
        return sources


def command_settings(models_dir: Path | None, **overrides: object) -> Settings:
    """A command's settings: the environment's, under its flags (`--models-dir` and others,
    each group's as a dict)."""
    if models_dir is not None:
        overrides["model"] = {"dir": models_dir}
    return Settings(**overrides)  # type: ignore[arg-type]


def settings_table() -> str:
    """Every setting as a markdown table (environment variable, default, meaning)."""
    rows = ["| environment variable | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, _Group):
                walk(annotation, f"{prefix}{name.upper()}__")
                continue
            default = info.get_default(call_default_factory=True)
            shown = str(default).replace(str(BUNDLED_MODELS_DIR), "<repo>/models")
            meaning = (info.description or "").replace("|", "\\|")
            rows.append(f"| `{prefix}{name.upper()}` | `{shown}` | {meaning} |")

    walk(Settings, "STREAMWATCH_")
    return "\n".join(rows)
