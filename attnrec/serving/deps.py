"""Shared router dependencies: the service, the write key and settings-based limits."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader

from attnrec.serving.engine import ModelSnapshot
from attnrec.serving.service import RecService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Required by write and delete endpoints")


def get_service(request: Request) -> RecService:
    return request.app.state.service


ServiceDep = Annotated[RecService, Depends(get_service)]


def snapshot(request: Request, service: RecService) -> ModelSnapshot:
    """The model this request uses from start to end; its version goes in the response header."""
    snap = service.snap
    request.scope["attnrec.model_version"] = snap.version
    return snap


def require_write_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    settings = request.app.state.service.settings
    expected = settings.write_key
    if expected is None:
        if settings.dev:
            return
        # unreachable when started normally (create_app refuses), kept as a safety net
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "write endpoints are disabled: no API key configured")
    if key is None or not hmac.compare_digest(key.encode(), expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key",
                            headers={"WWW-Authenticate": "APIKey"})


WriteKey = Depends(require_write_key)


def check_limit(name: str, value: int, limit: int) -> None:
    """422 with a clear message when a size exceeds its configured maximum."""
    if value > limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{name} is {value}, above the configured maximum of {limit}")
