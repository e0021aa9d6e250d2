"""Catalogue lookups and similar items."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request, status
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import ServiceDep, WriteKey, check_limit, query_openapi, query_parser, snapshot
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import ItemOut, ItemsAdded, ItemsIn, RawId, Recommendations, SimilarQuery

router = APIRouter(prefix="/items", tags=["items"])

ItemPath = Annotated[RawId, Path(description="Raw item id")]
_similar_query = query_parser(SimilarQuery)


@router.get("/{item}", response_model=ItemOut, summary="An item: catalogue entry and popularity")
async def get_item(request: Request, item: ItemPath, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    dense = snap.item_map.get(item)
    info = snap.item_info(item)
    if dense is None and info is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown item {item!r}")
    return FastJSON({
        "item": item, "known_to_model": dense is not None,
        "name": info.name if info else None, "category": info.category if info else None,
        "description": info.description if info else None,
        "fit_interactions": int(snap.item_counts[dense]) if dense is not None else 0,
    })


@router.get("/{item}/similar", response_model=Recommendations,
            openapi_extra=query_openapi(SimilarQuery),
            summary="The most similar items under the model's item-item similarity "
                    "(EASE weights, kNN similarities, cosine of item vectors or of item texts)")
async def similar_items(request: Request, item: ItemPath, service: ServiceDep) -> FastJSON:
    q = _similar_query(request)
    check_limit("k", q.k, service.settings.max_k)
    snap = snapshot(request, service)
    dense = snap.item_map.get(item)
    if dense is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"item {item!r} is unknown to the model")
    kw = dict(k=q.k, categories=q.categories, exclude_categories=q.exclude_categories)
    if snap.inline:
        out = service.similar_items(snap, dense, **kw)
    else:
        out = await run_in_threadpool(service.similar_items, snap, dense, **kw)
    return FastJSON(out)


@router.post("", response_model=ItemsAdded, status_code=status.HTTP_201_CREATED, dependencies=[WriteKey],
             summary="Add or re-describe catalogue items (content-aware models: recommendable without retraining)")
async def add_items(body: ItemsIn, service: ServiceDep) -> FastJSON:
    rows = [{"item_id": i.item, "name": i.name, "category": i.category, "description": i.description}
            for i in body.items]
    out = await service.add_items(rows)
    return FastJSON(out, status_code=status.HTTP_201_CREATED)
