"""Recommendations for a user (stored + fit-time history) and for an anonymous session."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import UNAVAILABLE, ServiceDep, check_limit, query_openapi, query_parser, snapshot
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import PathId, Recommendations, RecQuery, SessionRequest
from attnrec.serving.service import RecService

router = APIRouter(tags=["recommendations"], responses=UNAVAILABLE)

UserPath = Annotated[PathId, Path(description="Raw user id, percent-encoded ('/' as %2F)")]
_rec_query = query_parser(RecQuery)


def _check(service, k: int, offset: int, *lists: tuple[str, list]) -> None:
    s = service.settings
    check_limit("k", k, s.max_k)
    check_limit("offset", offset, s.max_offset)
    for name, values in lists:
        check_limit(f"length of {name}", len(values), s.max_history)


@router.get("/users/{user}/recommendations", response_model=Recommendations,
            openapi_extra=query_openapi(RecQuery),
            summary="Top-k for a user: fit-time history plus live events")
async def recommend_user(request: Request, user: UserPath) -> FastJSON:
    # the hot path: no dependency resolution, just the path parameter
    service: RecService = request.app.state.service
    q = _rec_query(request)
    _check(service, q.k, q.offset, ("exclude", q.exclude))
    snap = snapshot(request, service)
    entry = service.cached_user(user) or service.user_without_events(user)
    if entry is None:
        entry = await run_in_threadpool(service.load_user, user)
    if snap.inline:
        out = service.recommend_user(snap, user, entry, q)
    else:
        out = await run_in_threadpool(service.recommend_user, snap, user, entry, q)
    return FastJSON(out)


@router.post("/recommendations/session", response_model=Recommendations,
             summary="Top-k for an anonymous session (a list of item ids)")
async def recommend_session(request: Request, body: SessionRequest, service: ServiceDep) -> FastJSON:
    _check(service, body.k, body.offset, ("items", body.items), ("exclude", body.exclude))
    snap = snapshot(request, service)
    history, unknown = snap.encode_items(body.items)
    kw = dict(k=body.k, offset=body.offset, exclude_seen=body.exclude_seen, exclude=body.exclude,
              categories=body.categories, exclude_categories=body.exclude_categories,
              explain=body.explain)
    if snap.inline:
        out = service.recommend_history(snap, history, **kw)
    else:
        out = await run_in_threadpool(service.recommend_history, snap, history, **kw)
    out["unknown_items"] = unknown
    return FastJSON(out)
