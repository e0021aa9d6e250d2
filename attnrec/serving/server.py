"""``run(...)``: what ``attnrec serve`` calls."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

WORKER_SETTINGS_ENV = "ATTNREC_WORKER_SETTINGS"


def run(model: Path, db: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        data_dir: Path | None = None, dev: bool = False, workers: int = 1,
        settings_file: Path | None = None, log_level: str = "info", index: str | None = None) -> None:
    """Serve the bundle ``model`` with uvicorn until interrupted.

    ``db``: SQLAlchemy URL (default: SQLite ``events.db`` in ``data_dir``, itself
    defaulting to ``.attnrec``). ``dev``: allow write endpoints without an API key.
    ``index``: top-k retrieval (``auto``/``exact``/``hnsw``/``ivf``, see
    :class:`~attnrec.serving.settings.Settings`). ``workers``: processes sharing the
    database (PostgreSQL for real traffic); each picks up the others' writes within
    ``sync_interval_s``. Other settings come from ``ATTNREC_*`` variables or the TOML
    ``settings_file``.
    """
    import torch
    import uvicorn

    from attnrec.serving.app import create_app
    from attnrec.serving.settings import load_settings

    if workers < 1:
        raise ValueError(f"workers must be at least one worker, got {workers}")
    settings = load_settings(settings_file, model_path=model, database_url=db, host=host, port=port,
                             data_dir=data_dir, dev=dev or None, index=index)
    if not (settings.model_path / "config.json").is_file():
        # fail here with one line, not with a traceback from inside the lifespan
        raise FileNotFoundError(f"{settings.model_path} is not a model bundle (no config.json)")
    create_app(settings)  # refuses to start with open write endpoints
    # one request at a time per core is the fastest on small CPUs; intra-op threads only contend
    torch.set_num_threads(1)
    loop = "uvloop" if _has("uvloop") else "auto"
    http = "httptools" if _has("httptools") else "auto"
    common = dict(host=settings.host, port=settings.port, loop=loop, http=http, log_level=log_level,
                  access_log=False, timeout_graceful_shutdown=10)
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    if settings.resolved_database_url.startswith("sqlite"):
        log.warning("%d workers on SQLite: they share the file, but one writer at a time; use "
                    "PostgreSQL (--db postgresql://...) for real traffic", workers)
    # the workers are new processes: hand them the resolved settings (the secret included, so
    # they all key tombstones the same way) through their environment
    os.environ[WORKER_SETTINGS_ENV] = _dump(settings.model_copy(update={"secret": settings.tombstone_secret().decode()}))
    uvicorn.run("attnrec.serving.server:worker_app", factory=True, workers=workers, **common)


def worker_app():
    """App factory of one worker process (``uvicorn --factory``); settings from the parent."""
    import torch

    from attnrec.serving.app import create_app
    from attnrec.serving.settings import Settings

    torch.set_num_threads(1)
    raw = os.environ.get(WORKER_SETTINGS_ENV)
    if raw is None:
        raise RuntimeError(f"{WORKER_SETTINGS_ENV} is not set: start workers with attnrec serve --workers N")
    return create_app(Settings(**json.loads(raw)))


def _dump(settings) -> str:
    from pydantic import SecretStr

    data = {}
    for name in type(settings).model_fields:
        v = getattr(settings, name)
        if isinstance(v, SecretStr):
            v = v.get_secret_value()
        elif isinstance(v, Path):
            v = str(v)
        data[name] = v
    return json.dumps(data)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
