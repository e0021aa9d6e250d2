"""Typed service settings: init arguments > ``ATTNREC_*`` environment > settings file.

The settings file is TOML, named by ``ATTNREC_SETTINGS_FILE`` (or the
``settings_file`` argument of :func:`load_settings`), with the same keys as the
fields below, e.g.::

    model_path = "runs/sasrec-beauty"
    database_url = "postgresql://attnrec@db/attnrec"
    api_key = "change-me"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SETTINGS_FILE_ENV = "ATTNREC_SETTINGS_FILE"


class InsecureConfiguration(ValueError):
    """Write endpoints would be reachable without an API key outside development."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTNREC_", extra="forbid", validate_default=True)

    model_path: Path = Field(description="Model bundle directory (config.json, weights.safetensors, ...)")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file events.db in data_dir"
    )
    data_dir: Path = Field(Path(".attnrec"), description="Where the default SQLite database lives")
    api_key: SecretStr | None = Field(None, description="Key required by write/delete endpoints")
    dev: bool = Field(False, description="Local development: allow write endpoints without a key")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # request limits: anything larger is a 4xx, never work for the server
    max_k: int = Field(100, ge=1)
    max_batch: int = Field(1000, ge=1, description="Most events in one ingest request")
    max_history: int = Field(500, ge=1, description="Most items in a session or exclude list")
    max_body_bytes: int = Field(2_000_000, ge=1024)
    explain_top: int = Field(5, ge=1, description="History items listed per explained item")
    index: str = Field(
        "auto", pattern="^(auto|exact|hnsw|ivf)$",
        description="Top-k retrieval for vector models (SASRec, BERT4Rec): auto = exact scoring up to "
        "100k items, a FAISS IVF index above; exact/hnsw/ivf force a FAISS index of that kind",
    )

    opentelemetry: bool = Field(False, description="FastAPI's native OpenTelemetry (if available)")

    # model lifecycle
    watch_model: bool = Field(True, description="Reload when the bundle's config.json changes")
    watch_interval_s: float = Field(2.0, gt=0)

    # caches
    user_cache_size: int = Field(100_000, ge=1, description="Users whose sequences are kept in memory")
    rec_cache_per_user: int = Field(4, ge=0, description="Cached result sets per user (0 = off)")

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, v: str | None) -> str | None:
        # plain postgresql:// would pick psycopg2, which we do not ship
        if v and (v.startswith("postgresql://") or v.startswith("postgres://")):
            v = "postgresql+psycopg://" + v.split("://", 1)[1]
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get(SETTINGS_FILE_ENV)
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_file)))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'events.db').resolve()}"

    @property
    def write_key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key else None

    def check_secure(self) -> None:
        if not self.write_key and not self.dev:
            raise InsecureConfiguration(
                "refusing to start: write and delete endpoints would be open to anyone. "
                "Set ATTNREC_API_KEY (or api_key in the settings file), or pass --dev "
                "for local development."
            )


def load_settings(settings_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings; ``None`` overrides are dropped so env/file values still apply."""
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if settings_file is None:
        return Settings(**kwargs)
    old = os.environ.get(SETTINGS_FILE_ENV)
    os.environ[SETTINGS_FILE_ENV] = str(settings_file)
    try:
        return Settings(**kwargs)
    finally:
        if old is None:
            os.environ.pop(SETTINGS_FILE_ENV, None)
        else:
            os.environ[SETTINGS_FILE_ENV] = old
