"""The app factory: ``create_app(settings)`` builds a FastAPI app; the lifespan loads the model once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import time

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

import attnrec
from attnrec.serving.engine import BadRequest
from attnrec.serving.metrics import Metrics
from attnrec.serving.routers import admin, events, explorer, items, recommendations, users
from attnrec.serving.service import RecService
from attnrec.serving.settings import Settings

log = logging.getLogger(__name__)

VERSION_HEADER = b"x-model-version"


class ObservabilityMiddleware:
    """Pure ASGI (no per-request task like BaseHTTPMiddleware): metrics, model-version header
    and a request body limit (413 before any parsing)."""

    def __init__(self, app, service: RecService):
        self.app = app
        self.service = service
        self._children: dict[tuple, tuple] = {}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status_code = 500
        limit = self.service.settings.max_body_bytes

        app_receive = receive
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = limit + 1
        if length is not None and length > limit:
            return await self._reject(scope, send, t0, limit)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            # no length (chunked): buffer up to the limit before the app sees it, because
            # FastAPI turns any error raised while it reads the body into a 400
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > limit:
                    return await self._reject(scope, send, t0, limit)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await _wait_disconnect()

            app_receive = replay

        async def send_wrapper(message):
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                version = scope.get("attnrec.model_version")
                if version is None and self.service.current is not None:
                    version = self.service.current.version
                if version is not None:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (VERSION_HEADER, version.encode())]}
            await send(message)

        try:
            await self.app(scope, app_receive, send_wrapper)
        finally:
            self._observe(scope, status_code, t0)

    async def _reject(self, scope, send, t0, limit):
        snap = self.service.current
        body = JSONResponse({"detail": f"request body larger than {limit} bytes"},
                            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
                            headers={"x-model-version": snap.version} if snap else None)
        await body({"type": "http"}, _empty_receive, send)
        self._observe(scope, 413, t0)

    def _observe(self, scope, status_code: int, t0: float) -> None:
        route = scope.get("route")
        path = route.path if route is not None else "unmatched"  # templates, never raw ids
        key = (scope["method"], path, status_code)
        children = self._children.get(key)
        if children is None:  # labels() costs a lock and a lookup; the set of keys is small
            m = self.service.metrics
            children = (m.requests.labels(key[0], path, str(status_code)), m.latency.labels(key[0], path))
            self._children[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - t0)


async def _wait_disconnect():
    import asyncio as _asyncio

    await _asyncio.Event().wait()  # never set: the server cancels us on disconnect
    return {"type": "http.disconnect"}


async def _empty_receive():
    return {"type": "http.request", "body": b"", "more_body": False}


def _telemetry_kwargs(enabled: bool) -> dict:
    """FastAPI's native OpenTelemetry looks up providers on every request; we export
    Prometheus metrics ourselves, so it is off unless asked for (newer FastAPI only)."""
    if enabled or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_app(settings: Settings) -> FastAPI:
    """Build the app; nothing is loaded until the lifespan starts."""
    settings.check_secure()
    service = RecService(settings, Metrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(service.start)
        # the model and id maps are long-lived: keep the cyclic GC from rescanning them,
        # which otherwise shows up as multi-millisecond pauses in the latency tail
        gc.collect()
        gc.freeze()
        if settings.dev and not settings.write_key:
            log.warning("development mode: write and delete endpoints accept requests without a key")
        if settings.watch_model:
            service._watch_task = asyncio.create_task(service.watch())
        try:
            yield
        finally:
            if service._watch_task is not None:
                service._watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await service._watch_task
            service.close()

    app = FastAPI(
        title="attnrec",
        version=attnrec.__version__,
        description="Real-time recommendations with live events and attention explanations. "
        "Ids are raw strings; write endpoints need the X-API-Key header.",
        lifespan=lifespan,
        **_telemetry_kwargs(settings.opentelemetry),
    )
    app.state.service = service

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        # FastAPI's default shape, plus a one-line summary a person can read
        errors = exc.errors()
        summary = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5]
        )
        detail = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in errors]
        return JSONResponse({"detail": detail, "message": summary},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    for r in (events.router, recommendations.router, items.router, users.router, admin.router, explorer.router):
        app.include_router(r)
    app.add_middleware(ObservabilityMiddleware, service=service)
    return app
