"""Settings: environment variables with the URBIS_ prefix, passed into create_app."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every limit on input is a setting; none is read at import time."""

    model_config = SettingsConfigDict(env_prefix="URBIS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = Field(
        default=None, description="On-disk store directory; None keeps the twin in memory."
    )
    open: bool = Field(default=False, description="Anonymous full access (development only).")
    admin_token: str | None = Field(default=None, description="Bearer token required for writes.")
    demo: bool = False
    demo_live_seconds: float = Field(default=5.0, description="Demo update period; 0 disables.")

    max_body_bytes: int = 8 * 1024 * 1024
    max_json_depth: int = 64
    max_batch_size: int = 5000
    max_page_size: int = 1000
    default_page_size: int = 20
    max_q_length: int = 4096
    max_scan: int = 200_000

    context_fetch_timeout: float = 5.0
    max_context_bytes: int = 1_000_000
    context_cache_ttl: float = 3600.0
    allow_remote_contexts: bool = True

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size must not exceed max_page_size")
        if self.open and self.admin_token:
            # Not an error, but worth knowing: the token is then unnecessary.
            pass
        return self
