"""Health, readiness, Prometheus metrics and the model lifecycle."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import ServiceDep, WriteKey, redact_paths, snapshot
from attnrec.serving.metrics import CONTENT_TYPE_LATEST
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import Health, ModelInfo, Readiness, ReloadRequest, ReloadResult

router = APIRouter(tags=["admin"])


@router.head("/health", include_in_schema=False)
@router.get("/health", response_model=Health, summary="Liveness: the process answers (no key needed)")
async def health() -> FastJSON:
    return FastJSON({"status": "ok"})


@router.head("/ready", include_in_schema=False)
@router.get("/ready", response_model=Readiness,
            summary="Readiness: model loaded, database answering and accepting writes (no key needed)",
            responses={503: {"model": Readiness}})
async def ready(service: ServiceDep) -> FastJSON:
    db, detail = (await run_in_threadpool(service.store.health)) if service.store is not None \
        else (False, "not started")
    snap = service.current
    ok = db and snap is not None
    return FastJSON({"ready": ok, "model_version": snap.version if snap else None, "database": db,
                     "database_detail": detail}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    service.report_filter_caches()
    return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/admin/model", response_model=ModelInfo, summary="The model being served")
async def model_info(request: Request, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    trained = (snap.config.get("info") or {}).get("event_types")
    return FastJSON({**snap.info(), "event_types": service.settings.event_types,
                     "trained_event_types": trained})


@router.post("/admin/reload", response_model=ReloadResult, dependencies=[WriteKey],
             summary="Load a bundle (default: the current path again) and swap it in atomically")
async def reload(request: Request, service: ServiceDep, body: ReloadRequest | None = None) -> FastJSON:
    try:
        old, new = await service.reload(body.path if body else None)
    except Exception as e:  # noqa: BLE001 - any bundle problem is the caller's input
        # the reason without file-system paths: responses never reveal the server's layout
        reason = type(e).__name__ if isinstance(e, OSError) else f"{type(e).__name__}: {redact_paths(str(e))}"
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"could not load the bundle ({reason}); still serving "
                            f"{service.snap.version}") from None
    request.scope["attnrec.model_version"] = new
    return FastJSON({"previous_version": old, "version": new, "changed": old != new})
