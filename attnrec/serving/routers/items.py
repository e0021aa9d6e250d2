"""The catalogue: item lookups, similar items, and managing items (register, change, hide, delete)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import (
    UNAVAILABLE, ServiceDep, WriteKey, check_limit, has_write_key, query_openapi, query_parser, snapshot,
)
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import (
    ItemDeleted, ItemOut, ItemPatch, ItemsAdded, ItemsIn, PathId, Recommendations, SimilarQuery,
)

router = APIRouter(prefix="/items", tags=["items"], responses=UNAVAILABLE)

ItemPath = Annotated[PathId, Path(description="Raw item id, percent-encoded ('/' as %2F)")]
_similar_query = query_parser(SimilarQuery)


def _unknown(item: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"unknown item {item!r}")


@router.get("/{item}", response_model=ItemOut,
            summary="An item: catalogue entry and popularity (hidden items: write key only)")
async def get_item(request: Request, item: ItemPath, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    cat = service.catalogue
    if cat.deleted(item) or (cat.blocked(item) and not has_write_key(request)):
        raise _unknown(item)
    if snap.item_map.get(item) is None and snap.item_info(item) is None and cat.get(item) is None:
        raise _unknown(item)
    return FastJSON(service.describe_item(snap, item))


@router.patch("/{item}", response_model=ItemOut, dependencies=[WriteKey],
              summary="Change an item: hidden, categories, labels, name, description, expiry "
                      "(immediate on every endpoint)")
async def patch_item(request: Request, item: ItemPath, body: ItemPatch, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    if service.catalogue.deleted(item):
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"item {item!r} was deleted; register it again with POST /items")
    if snap.item_map.get(item) is None and snap.item_info(item) is None and service.catalogue.get(item) is None:
        raise _unknown(item)
    changes = body.model_dump(exclude_unset=True)
    if "ttl_s" in changes:
        ttl = changes.pop("ttl_s")
        if "expires_at" in changes:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give ttl_s or expires_at, not both")
        changes["expires_at"] = None if ttl is None else time.time() + ttl
    if changes.get("hidden") is None:
        changes.pop("hidden", None)
    if not changes:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "nothing to change: send at least one field")
    out = await run_in_threadpool(service.update_item, item, changes)
    return FastJSON(out)


@router.delete("/{item}", response_model=ItemDeleted, dependencies=[WriteKey],
               summary="Delete an item: never recommended again and gone from every listing")
async def delete_item(request: Request, item: ItemPath, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    cat = service.catalogue
    if cat.deleted(item) or (snap.item_map.get(item) is None and snap.item_info(item) is None
                             and cat.get(item) is None):
        raise _unknown(item)
    await run_in_threadpool(service.update_item, item, {"deleted": True})
    return FastJSON({"item": item, "deleted": True})


@router.get("/{item}/similar", response_model=Recommendations,
            openapi_extra=query_openapi(SimilarQuery),
            summary="The most similar items under the model's item-item similarity "
                    "(EASE weights, kNN similarities, cosine of item vectors or of item texts)")
async def similar_items(request: Request, item: ItemPath, service: ServiceDep) -> FastJSON:
    q = _similar_query(request)
    check_limit("k", q.k, service.settings.max_k)
    check_limit("offset", q.offset, service.settings.max_offset)
    check_limit("length of exclude", len(q.exclude), service.settings.max_history)
    snap = snapshot(request, service)
    dense = snap.item_map.get(item)
    if dense is None or service.catalogue.deleted(item):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item!r} is unknown to the model")
    kw = dict(k=q.k, offset=q.offset, exclude=q.exclude, categories=q.categories,
              exclude_categories=q.exclude_categories)
    if snap.inline:
        out = service.similar_items(snap, dense, **kw)
    else:
        out = await run_in_threadpool(service.similar_items, snap, dense, **kw)
    return FastJSON(out)


@router.post("", response_model=ItemsAdded, status_code=status.HTTP_201_CREATED, dependencies=[WriteKey],
             summary="Register or re-describe catalogue items (any model; content-aware models also "
                     "embed them, recommendable without retraining)")
async def add_items(body: ItemsIn, service: ServiceDep) -> FastJSON:
    now = time.time()
    rows = [{"item_id": i.item, "name": i.name, "category": i.category, "categories": i.categories,
             "labels": i.labels, "description": i.description,
             "expires_at": None if i.ttl_s is None else now + i.ttl_s}
            for i in body.items]
    out = await service.add_items(rows)
    return FastJSON(out, status_code=status.HTTP_201_CREATED)
