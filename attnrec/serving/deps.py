"""Shared router dependencies: the service, the write key and settings-based limits."""

from __future__ import annotations

import hmac
import re
from typing import Annotated, get_origin

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from fastapi.security import APIKeyHeader

from attnrec.serving.engine import ModelSnapshot
from attnrec.serving.schemas import Unavailable
from attnrec.serving.service import RecService

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="The write key (write and delete endpoints, and reads), or "
                              "the read key (reads, when one is configured)")

# the database did not answer in time: clients retry after Retry-After seconds
UNAVAILABLE = {503: {"model": Unavailable, "description": "Database unavailable; retry later"}}


async def get_service(request: Request) -> RecService:
    return request.app.state.service


ServiceDep = Annotated[RecService, Depends(get_service)]


def snapshot(request: Request, service: RecService) -> ModelSnapshot:
    """The model this request uses from start to end; its version goes in the response header."""
    snap = service.snap
    request.scope["attnrec.model_version"] = snap.version
    return snap


async def require_write_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    settings = request.app.state.service.settings
    expected = settings.write_key
    if expected is None:
        if settings.dev:
            return
        # unreachable when started normally (create_app refuses), kept as a safety net
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "write endpoints are disabled: no API key configured")
    if key is None or not _same(key, expected):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong X-API-Key",
                            headers={"WWW-Authenticate": "APIKey"})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def has_write_key(request: Request) -> bool:
    """Whether the request carries the write key (or the service runs in dev mode without one)."""
    expected = request.app.state.service.settings.write_key
    if expected is None:
        return request.app.state.service.settings.dev
    key = request.headers.get("x-api-key")
    return key is not None and _same(key, expected)


def read_allowed(settings, key: str | None) -> bool:
    """Reads are open without a read key; with one they need it or the write key."""
    read = settings.read_only_key
    if read is None:
        return True
    if key is None:
        return False
    write = settings.write_key
    return _same(key, read) or (write is not None and _same(key, write))


WriteKey = Depends(require_write_key)


def check_limit(name: str, value: int, limit: int) -> None:
    """422 with a clear message when a size exceeds its configured maximum."""
    if value > limit:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"{name} is {value}, above the configured maximum of {limit}")


def query_parser(model_cls: type[BaseModel]):
    """A function parsing a request's query string into ``model_cls`` (extra fields forbidden).

    Same semantics as FastAPI's ``Annotated[Model, Query()]`` (repeated keys for
    list fields, last value wins otherwise, errors as 422 under ``loc=("query", ...)``)
    at a fraction of its per-request cost (no dependency resolution), which matters on
    the recommendation hot path. Pair it with ``openapi_extra=query_openapi(model_cls)``
    so the docs list the parameters.
    """
    list_fields = frozenset(
        name for name, f in model_cls.model_fields.items() if get_origin(f.annotation) is list
    )

    def parse(request: Request):
        data: dict = {}
        for key, value in request.query_params.multi_items():
            if key in list_fields:
                data.setdefault(key, []).append(value)
            else:
                data[key] = value
        try:
            return model_cls.model_validate(data)
        except ValidationError as e:
            raise RequestValidationError(
                [{**err, "loc": ("query", *err["loc"])} for err in e.errors(include_url=False)]
            ) from None

    return parse


def query_openapi(model_cls: type[BaseModel]) -> dict:
    """OpenAPI ``parameters`` for a :func:`query_parser` model."""
    schema = model_cls.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        p = {"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
        if description:
            p["description"] = description
        params.append(p)
    return {"parameters": params}


_PATHS = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s'\"/:]+){2,}/?")


def redact_paths(text: str) -> str:
    """``text`` with absolute file-system paths replaced by their last component."""
    return _PATHS.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
