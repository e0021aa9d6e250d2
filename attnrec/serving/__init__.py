"""The real-time HTTP service: ``create_app(settings)`` and ``run(...)``.

Endpoints (raw string ids everywhere; OpenAPI at ``/docs``; every response carries
the ``x-model-version`` header; ``*`` = needs the ``X-API-Key`` header):

* ``POST /events`` *, ``POST /events/batch`` * -- ingest; 201 only after the commit;
* ``GET /users/{user}/recommendations?k=&exclude_seen=&exclude=&categories=&exclude_categories=&explain=``;
* ``POST /recommendations/session`` -- anonymous session ``{"items": [...], ...}``;
* ``GET /items/{item}``, ``GET /items/{item}/similar?k=``;
* ``GET /users/{user}``, ``DELETE /users/{user}`` *;
* ``GET /health``, ``GET /ready``, ``GET /metrics``, ``GET /admin/model``, ``POST /admin/reload`` *.

Settings: :class:`attnrec.serving.settings.Settings` (``ATTNREC_*`` variables or the
TOML file named by ``ATTNREC_SETTINGS_FILE``). FastAPI is imported only when
``create_app`` is used, so ``attnrec.serving.run`` stays cheap to import for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attnrec.serving.server import run

if TYPE_CHECKING:  # pragma: no cover
    from attnrec.serving.app import create_app
    from attnrec.serving.settings import Settings

__all__ = ["create_app", "run", "Settings", "load_settings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from attnrec.serving.app import create_app

        return create_app
    if name == "Settings":
        from attnrec.serving.settings import Settings

        return Settings
    if name == "load_settings":
        from attnrec.serving.settings import load_settings

        return load_settings
    raise AttributeError(name)
