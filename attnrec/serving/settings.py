"""Typed service settings: init arguments > ``ATTNREC_*`` environment > settings file.

The settings file is TOML, named by ``ATTNREC_SETTINGS_FILE`` (or the
``settings_file`` argument of :func:`load_settings`), with the same keys as the
fields below, e.g.::

    model_path = "runs/sasrec-beauty"
    database_url = "postgresql://attnrec@db/attnrec"
    api_key = "change-me"
"""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
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
    api_key: SecretStr | None = Field(None, description="Key required by write/delete endpoints (implies read)")
    read_key: SecretStr | None = Field(
        None, description="When set, every route but /health and /ready needs X-API-Key "
        "(this key or the write key)")
    secret: SecretStr | None = Field(
        None, description="Server secret keying the tombstones of deleted users (HMAC); "
        "default: a random one kept in data_dir/secret.key")
    event_types: dict[str, float] = Field(
        default_factory=dict,
        description='Declared event types as JSON weights, e.g. {"purchase": 3, "view": 1, '
        '"dislike": -1, "impression": 0}: positive = positive feedback, negative = negative '
        "feedback (that item is never recommended to that user again), 0 = exclude only. "
        "Empty: every event is positive and any type is accepted")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (default: none; '*' for any)")
    db_timeout_s: float = Field(2.0, gt=0, le=60, description="Bound on every database call (then 503)")
    body_timeout_s: float = Field(10.0, gt=0, description="A request body must arrive within this time")
    sync_interval_s: float = Field(
        0.5, gt=0, le=60, description="How often a worker picks up other workers' events, deletions "
        "and catalogue changes from the shared database")
    cache_max_bytes: int = Field(64 * 2**20, ge=2**16, description="Bound on the per-user caches (bytes)")
    dev: bool = Field(False, description="Local development: allow write endpoints without a key")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    # request limits: anything larger is a 4xx, never work for the server
    max_k: int = Field(100, ge=1)
    max_offset: int = Field(1000, ge=0, description="Largest offset (paging) of a list endpoint")
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

    @field_validator("api_key", "read_key", "secret")
    @classmethod
    def _no_blank_keys(cls, v: SecretStr | None, info) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError(f"{info.field_name} is empty or whitespace; set a real value or leave it unset")
        if v is not None and v.get_secret_value() != v.get_secret_value().strip():
            raise ValueError(f"{info.field_name} has leading or trailing whitespace")
        return v

    @field_validator("event_types", mode="before")
    @classmethod
    def _parse_event_types(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as e:
                raise ValueError(f'event_types must be a JSON object of weights such as '
                                 f'{{"purchase": 3, "view": 1, "dislike": -1}}: {e}') from None
        if isinstance(v, dict):
            for name, w in v.items():
                if not isinstance(name, str) or not name.strip() or len(name) > 64:
                    raise ValueError(f"event type name {name!r} must be 1-64 characters")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                    raise ValueError(f"weight of event type {name!r} must be a finite number, got {w!r}")
        return v

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

    @property
    def read_only_key(self) -> str | None:
        return self.read_key.get_secret_value() if self.read_key else None

    def tombstone_secret(self) -> bytes:
        """The HMAC key of tombstones: ``secret``, else one generated once in ``data_dir``."""
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        f = self.data_dir / "secret.key"
        if not f.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return f.read_text().strip().encode()

    @model_validator(mode="after")
    def _keys_differ(self) -> "Settings":
        if self.read_key is not None and self.read_only_key == self.write_key:
            raise ValueError("read_key equals api_key: use a different read key (the write key already reads)")
        return self

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
