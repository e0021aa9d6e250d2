"""Event ingestion: acknowledged only after the transaction committed."""

from __future__ import annotations

from fastapi import APIRouter, status
from starlette.concurrency import run_in_threadpool

from attnrec.serving.deps import UNAVAILABLE, ServiceDep, WriteKey, check_limit
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import EventAck, EventBatchIn, EventIn

router = APIRouter(prefix="/events", tags=["events"], dependencies=[WriteKey], responses=UNAVAILABLE)


def _rows(events: list[EventIn]) -> list[dict]:
    return [{"user_id": e.user, "item_id": e.item, "event_type": e.event_type, "ts": e.timestamp,
             "event_id": e.event_id} for e in events]


@router.post("", response_model=EventAck, status_code=status.HTTP_201_CREATED,
             summary="Ingest one event")
async def ingest_event(event: EventIn, service: ServiceDep) -> FastJSON:
    ack = await run_in_threadpool(service.ingest, _rows([event]))
    return FastJSON(ack, status_code=status.HTTP_201_CREATED)


@router.post("/batch", response_model=EventAck, status_code=status.HTTP_201_CREATED,
             summary="Ingest a batch of events in one transaction")
async def ingest_batch(batch: EventBatchIn, service: ServiceDep) -> FastJSON:
    check_limit("batch size", len(batch.events), service.settings.max_batch)
    ack = await run_in_threadpool(service.ingest, _rows(batch.events))
    return FastJSON(ack, status_code=status.HTTP_201_CREATED)
