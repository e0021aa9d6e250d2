"""The real-time HTTP service: ``create_app(settings)`` and ``run(...)``.

FastAPI is imported only when ``create_app`` is used, so ``attnrec.serving.run``
stays importable cheaply by the CLI.
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
    if name in ("Settings", "load_settings"):
        from attnrec.serving import settings

        return getattr(settings, name)
    raise AttributeError(name)
