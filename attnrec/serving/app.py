"""The app factory: ``create_app(settings)`` builds a FastAPI app; the lifespan loads the model once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import time
from urllib.parse import quote, unquote

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

import attnrec
from attnrec.serving.deps import read_allowed
from attnrec.serving.engine import BadRequest
from attnrec.serving.metrics import Metrics
from attnrec.serving.routers import admin, events, explorer, items, recommendations, users
from attnrec.serving.service import RecService
from attnrec.serving.settings import Settings
from attnrec.serving.store import StoreUnavailable

log = logging.getLogger(__name__)

VERSION_HEADER = b"x-model-version"
RETRY_AFTER_S = 1

# reachable without a key even when a read key is set: probes, and the static shells of the
# explorer page and the API docs (they hold no data; the page asks for the key)
PUBLIC_PATHS = frozenset({"/health", "/ready", "/", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")


def _segment_path(raw_path: bytes) -> str:
    """The request path with ``%2F`` and ``%25`` kept encoded inside each segment.

    Routing splits the *decoded* path on ``/``, so ``/users/tenant%2F42`` would be two
    segments and no route would match. Ids are decoded again by ``schemas.PathId``.
    """
    segments = raw_path.decode("latin-1").split("/")
    return "/".join(quote(unquote(seg, encoding="utf-8", errors="replace"), safe="!$&'()*+,;=:@-._~ ")
                    if "%" in seg else seg for seg in segments)


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
        settings = self.service.settings
        limit = settings.max_body_bytes
        raw = scope.get("raw_path")
        if raw and b"%" in raw:
            low = raw.split(b"?", 1)[0].lower()
            if b"%2f" in low or b"%25" in low:
                scope = {**scope, "path": _segment_path(raw.split(b"?", 1)[0])}
        path = scope["path"]
        if (settings.read_only_key is not None and scope["method"] != "OPTIONS"
                and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES)):
            key = None
            for name, value in scope.get("headers", ()):
                if name == b"x-api-key":
                    key = value.decode("latin-1")
            if not read_allowed(settings, key):
                return await self._respond(scope, send, t0, 401, {"detail": "missing or wrong X-API-Key"},
                                           {"WWW-Authenticate": "APIKey"})

        body_timeout = settings.body_timeout_s
        deadline = None

        async def timed_receive():
            # the whole body within body_timeout_s: a trickle of bytes does not reset the clock
            nonlocal deadline
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + body_timeout
            try:
                return await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise _BodyTimeout from None

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
        if length != 0 and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            # buffer the body (up to the limit, within the body timeout) before the app sees
            # it, because FastAPI turns any error raised while it reads the body into a 400
            chunks, size, more = [], 0, True
            while more:
                try:
                    message = await timed_receive()
                except _BodyTimeout:
                    return await self._body_timeout(scope, send, t0, body_timeout)
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
        await self._respond(scope, send, t0, 413, {"detail": f"request body larger than {limit} bytes"})

    async def _body_timeout(self, scope, send, t0, seconds):
        await self._respond(scope, send, t0, 408,
                            {"detail": f"the request body did not arrive within {seconds:g} s"},
                            {"Connection": "close"})

    async def _respond(self, scope, send, t0, code: int, payload: dict, headers: dict | None = None):
        snap = self.service.current
        headers = dict(headers or {})
        if snap is not None:
            headers["x-model-version"] = snap.version
        body = JSONResponse(payload, status_code=code, headers=headers)
        await body({"type": "http"}, _empty_receive, send)
        self._observe(scope, code, t0)

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


class _BodyTimeout(Exception):
    """The client stopped sending its request body."""


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
        service._sync_task = asyncio.create_task(service.sync_loop())
        try:
            yield
        finally:
            for task in (service._watch_task, service._sync_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            service.close()

    app = _fastapi(
        title="attnrec",
        version=attnrec.__version__,
        description="Real-time recommendations with live events and attention explanations. "
        "Ids are raw strings, percent-encoded in paths ('/' as %2F). Write endpoints need the "
        "write key in the X-API-Key header; when a read key is configured every route but "
        "/health and /ready needs a key (the read key or the write key).",
        lifespan=lifespan,
        **_telemetry_kwargs(settings.opentelemetry),
    )
    app.state.service = service

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(_request: Request, exc: StoreUnavailable):
        service.metrics.db_errors.inc()
        return JSONResponse({"detail": str(exc), "retry_after_s": RETRY_AFTER_S},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

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
    # outermost: preflights are answered before the key check; no origin is allowed by default
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                       allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE"],
                       allow_headers=["X-API-Key", "Content-Type"], expose_headers=["X-Model-Version"],
                       max_age=600)
    return app


def _fastapi(**kwargs) -> FastAPI:
    """FastAPI whose /docs and /redoc load their assets from the package, never a CDN."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # pragma: no cover - fastapi-offline is in the serve extra
        log.warning("fastapi-offline is not installed: /docs and /redoc need a CDN")
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)
