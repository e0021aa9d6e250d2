"""``run(...)``: what ``attnrec serve`` calls."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def run(model: Path, db: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        data_dir: Path | None = None, dev: bool = False, workers: int = 1,
        settings_file: Path | None = None, log_level: str = "info", index: str | None = None) -> None:
    """Serve the bundle ``model`` with uvicorn until interrupted.

    ``db``: SQLAlchemy URL (default: SQLite ``events.db`` in ``data_dir``, itself
    defaulting to ``.attnrec``). ``dev``: allow write endpoints without an API key.
    ``index``: top-k retrieval (``auto``/``exact``/``hnsw``/``ivf``, see
    :class:`~attnrec.serving.settings.Settings`). Other settings come from ``ATTNREC_*`` variables or the TOML ``settings_file``.
    """
    import torch
    import uvicorn

    from attnrec.serving.app import create_app
    from attnrec.serving.settings import load_settings

    if workers != 1:
        # the per-user sequence cache is per process: a second worker would miss the
        # other's ingests; scale out with one process per replica behind sticky routing
        raise ValueError("attnrec serve runs one worker per process (workers=1)")
    settings = load_settings(settings_file, model_path=model, database_url=db, host=host, port=port,
                             data_dir=data_dir, dev=dev or None, index=index)
    if not (settings.model_path / "config.json").is_file():
        # fail here with one line, not with a traceback from inside the lifespan
        raise FileNotFoundError(f"{settings.model_path} is not a model bundle (no config.json)")
    app = create_app(settings)  # refuses to start with open write endpoints
    # one request at a time per core is the fastest on small CPUs; intra-op threads only contend
    torch.set_num_threads(1)
    loop = "uvloop" if _has("uvloop") else "auto"
    http = "httptools" if _has("httptools") else "auto"
    uvicorn.run(app, host=settings.host, port=settings.port, loop=loop, http=http,
                log_level=log_level, access_log=False, timeout_graceful_shutdown=10)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
