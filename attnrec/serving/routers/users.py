"""A user's state, and deletion of everything the service holds about them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import UNAVAILABLE, ServiceDep, WriteKey, snapshot
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import PathId, UserDeleted, UserOut

router = APIRouter(prefix="/users", tags=["users"], responses=UNAVAILABLE)

UserPath = Annotated[PathId, Path(description="Raw user id, percent-encoded ('/' as %2F)")]


@router.get("/{user}", response_model=UserOut, summary="What the service knows about a user")
async def get_user(request: Request, user: UserPath, service: ServiceDep,
                   recent: Annotated[int, Query(ge=0, le=100)] = 20) -> FastJSON:
    snap = snapshot(request, service)
    entry = await run_in_threadpool(service.load_user, user)
    known = service.is_known(snap, user, entry)
    if not known and not entry.events:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown user {user!r}")
    fit = snap.fit_history(user) if known else None
    seq = entry.sequence(snap, user)
    tail = seq[len(seq) - recent:] if recent else seq[:0]
    return FastJSON({
        "user": user, "known_to_model": known,
        "fit_events": 0 if fit is None else int(len(fit)),
        "stored_events": len(entry.events),
        "recent_items": [snap.raw_item(d) for d in tail.tolist()],
    })


@router.delete("/{user}", response_model=UserDeleted, dependencies=[WriteKey],
               summary="Delete a user's events and every derived state")
async def delete_user(request: Request, user: UserPath, service: ServiceDep) -> FastJSON:
    snapshot(request, service)
    n = await run_in_threadpool(service.delete_user, user)
    if n is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown user {user!r}")
    return FastJSON({"user": user, "deleted_events": n})
