"""The server's one configuration object, from arguments, ``TRAINVITALS_*`` variables or defaults.

Build it once and pass it to ``create_app``; nothing reads configuration anywhere else.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every server option. Environment variables are the names upper-cased, prefixed
    ``TRAINVITALS_`` (e.g. ``TRAINVITALS_INGEST_TOKEN``)."""

    model_config = SettingsConfigDict(env_prefix="TRAINVITALS_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server")
    port: int = Field(8765, ge=0, le=65535, description="port to listen on (0 picks a free one)")
    data_dir: Path = Field(Path("trainvitals-data"), description="where the SQLite store lives")
    ingest_token: str | None = Field(
        None, description="token trainers must send; unset, `trainvitals serve` keeps one in "
        "DATA_DIR/ingest-token")
    view_token: str | None = Field(
        None, description="if set, the dashboard and REST API require this (read-only) token")
    allowed_origins: list[str] = Field(
        default_factory=list, description="extra browser origins allowed on websockets "
        "(same-origin is always allowed)")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest ingest frame accepted")
    writer_batch: int = Field(512, ge=1, description="records committed per SQLite transaction")
    viewer_queue: int = Field(512, ge=8, description="messages buffered per browser before it "
                              "is told to resync")
    stall_steps: int = Field(10, ge=1, description="consecutive zeroed/clipped steps that make a "
                             "silent stall")
    resolve_after: int = Field(5, ge=1, description="clean steps before an alert resolves")
    thresholds: list[str] = Field(
        default_factory=list, description="user alert rules such as 'tensor/depth_raw/max>15' "
        "(append ':critical' for critical)")
    log_alerts: bool = Field(True, description="print alerts to the terminal as they happen")

    @field_validator("ingest_token", "view_token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 8:
            raise ValueError("tokens must be at least 8 characters")
        return value

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
