"""The server's one configuration object, from arguments, ``TRAINVITALS_*`` variables or defaults.

Build it once and pass it to ``create_app``; nothing reads configuration anywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every server option. Environment variables are the names upper-cased, prefixed
    ``TRAINVITALS_`` (e.g. ``TRAINVITALS_INGEST_TOKEN``). A TOML file named by ``config`` (or
    ``TRAINVITALS_CONFIG``) supplies the same keys at the lowest priority: arguments, then
    environment, then the file, then defaults."""

    # env_ignore_empty: compose files pass optional settings as ${VAR:-}; empty means unset.
    model_config = SettingsConfigDict(env_prefix="TRAINVITALS_", extra="forbid",
                                      env_ignore_empty=True)

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server")
    port: int = Field(8765, ge=0, le=65535, description="port to listen on (0 picks a free one)")
    data_dir: Path = Field(Path("trainvitals-data"), description="where the SQLite store lives")
    database_url: str | None = Field(
        None, repr=False, description="PostgreSQL database to store in instead of DATA_DIR, "
        "e.g. postgresql://user:password@host:5432/trainvitals; several servers may share it "
        "(needs pip install 'trainvitals[postgres]')")
    ingest_token: str | None = Field(
        None, description="token trainers must send; unset, `trainvitals serve` keeps one in "
        "DATA_DIR/ingest-token")
    view_token: str | None = Field(
        None, description="if set, the dashboard and REST API require this (read-only) token")
    allowed_origins: list[str] = Field(
        default_factory=list, description="extra browser origins allowed on websockets "
        "(same-origin is always allowed)")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest ingest frame accepted")
    max_runs: int = Field(10_000, ge=1, description="most runs this server keeps; a record of "
                          "a new run beyond it is refused (error limit_exceeded)")
    max_series_per_run: int = Field(10_000, ge=1, description="most series (metrics) one run "
                                    "may have; a step adding more is refused")
    writer_batch: int = Field(512, ge=1, description="records committed per store transaction")
    viewer_queue: int = Field(512, ge=8, description="messages buffered per browser before it "
                              "is told to resync")
    stall_steps: int = Field(10, ge=1, description="consecutive zeroed/clipped steps that make a "
                             "silent stall")
    resolve_after: int = Field(5, ge=1, description="clean steps before an alert resolves")
    thresholds: list[str] = Field(
        default_factory=list, description="user alert rules such as 'tensor/depth_raw/max>15' "
        "(append ':critical' for critical)")
    log_alerts: bool = Field(True, description="print alerts to the terminal as they happen")
    headroom_warning: float = Field(
        0.5, ge=0, lt=1, description="warn when a tensor feeding exp has less than this "
        "fraction of its dtype's overflow margin left (0.5: exp(max)² would overflow; float32: "
        "max above 44.4, float16: above 5.5)")
    headroom_critical: float = Field(
        0.05, ge=0, lt=1, description="critical below this fraction (float32: max above 84.3)")
    headroom_horizon: int = Field(
        1000, ge=1, description="warn when a steadily rising max would reach exp's overflow "
        "within this many steps")
    amp_skip_steps: int = Field(
        20, ge=1, description="a GradScaler that skips this many optimizer steps in a row "
        "raises an amp incident (a few skips while it finds its scale are normal)")
    amp_scale_floor: float = Field(
        1.0, gt=0, description="a GradScaler's scale below this while it skips: collapsed "
        "(an amp incident at once)")
    silent_after_s: float = Field(60.0, gt=0, description="seconds without data after which a "
                                  "running run is shown as silent")
    config: Path | None = Field(
        None, description="TOML file of settings (same names as these flags, e.g. "
        "'stall_steps = 20'); flags and variables override it")
    webhook_urls: list[str] = Field(
        default_factory=list, description="URLs that get alert openings/resolutions as JSON POSTs")
    slack_webhook_urls: list[str] = Field(
        default_factory=list, description="Slack-compatible incoming-webhook URLs for alerts")
    webhook_min_severity: Literal["warning", "critical"] = Field(
        "warning", description="least severe alert sent to webhooks")
    webhook_per_minute: int = Field(
        20, ge=1, description="posts per minute per webhook URL; alerts beyond it are "
        "coalesced into the next post")
    webhook_retries: int = Field(4, ge=0, description="retries of a failed webhook post "
                                 "(exponential backoff from 1 s)")
    retain_days: float | None = Field(
        None, gt=0, description="delete finished runs last updated more than this many days ago")
    retain_bytes: int | None = Field(
        None, ge=1 << 20, description="delete the oldest finished runs while the store holds "
        "more than this many bytes")
    retention_interval: float = Field(600.0, gt=0, description="seconds between retention "
                                      "sweeps (when retain_days or retain_bytes is set)")
    metrics: bool = Field(True, description="serve Prometheus metrics at /metrics (behind the "
                          "view token, if one is set)")
    min_free_bytes: int = Field(
        256 << 20, ge=0, description="keep at least this many bytes free on DATA_DIR's disk: "
        "below it new records are refused (error unavailable; trainers keep them), so SQLite "
        "can still checkpoint, answer reads and run retention; 0 turns the floor off "
        "(default 256 MiB)")
    min_free_percent: float = Field(
        0.0, ge=0, le=50, description="or keep this percentage of the disk free, whichever "
        "is more")
    health_interval: float = Field(
        5.0, gt=0, description="seconds between readiness checks (free space, a database "
        "read, the replica relay; a probe commit after a failed one)")
    backlog_warn_s: float = Field(
        60.0, gt=0, description="a trainer whose oldest unacknowledged record is older than "
        "this raises a spool_backlog condition on its run")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then ``TRAINVITALS_*`` variables, then the TOML file, if one is named."""
        given = getattr(init_settings, "init_kwargs", {}).get("config")
        path = given or os.environ.get("TRAINVITALS_CONFIG") or None
        if path is None:
            return init_settings, env_settings
        if not Path(path).is_file():
            raise ValueError(f"config: no such file {path}")
        try:
            toml = TomlConfigSettingsSource(settings_cls, Path(path))
        except ValueError as exc:  # tomllib.TOMLDecodeError: say which file
            raise ValueError(f"config: {path} is not valid TOML: {exc}") from None
        return init_settings, env_settings, toml

    @field_validator("ingest_token", "view_token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 8:
            raise ValueError("tokens must be at least 8 characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        # The message leaves the value out: it may hold a password.
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must be a postgresql:// (or postgres://) URL")
        return value

    @field_validator("webhook_urls", "slack_webhook_urls")
    @classmethod
    def _urls_http(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URLs must start with http:// or https://: {url!r}")
        return value

    @model_validator(mode="after")
    def _headroom_order(self) -> Settings:
        if self.headroom_critical > self.headroom_warning:
            raise ValueError(f"headroom_critical ({self.headroom_critical}) must not exceed "
                             f"headroom_warning ({self.headroom_warning})")
        return self

    @field_validator("thresholds")
    @classmethod
    def _thresholds_parse(cls, value: list[str]) -> list[str]:
        from trainvitals.server.alerts import Threshold

        for text in value:
            Threshold.parse(text)  # raises ValueError with the reason
        return value

    @property
    def db_path(self) -> Path:
        """The SQLite file inside ``data_dir``."""
        return self.data_dir / "trainvitals.sqlite3"
