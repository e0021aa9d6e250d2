"""The web explorer: the page at ``/``, its static files, and the JSON it needs beyond the API.

Everything ships in the package (``attnrec/serving/static``): no CDN, no build step.
The page itself calls the public API (recommendations, events) plus these helpers:

* ``GET /explorer/users`` and ``GET /explorer/items``: search the ids the model knows;
* ``GET /explorer/model``: the model card (dataset, training settings, offline metrics);
* ``GET /users/{user}/attention`` and ``POST /sessions/attention``: the sequence
  with item names and the per-layer, per-head attention over it.
"""

from __future__ import annotations

import importlib.resources
import re
import weakref
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from attnrec.jsonable import to_jsonable
from attnrec.models.base import Capability
from attnrec.serving.deps import UNAVAILABLE, ServiceDep, check_limit, redact_paths, snapshot
from attnrec.serving.engine import ModelSnapshot
from attnrec.serving.responses import FastJSON
from attnrec.serving.schemas import HARD_MAX_LIST, PathId, RawId, Strict

router = APIRouter(tags=["explorer"], responses=UNAVAILABLE)

STATIC_PACKAGE = "attnrec.serving"
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(?:html|js|css|svg|png|ico)$")
_MEDIA = {
    "html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8", "svg": "image/svg+xml", "png": "image/png",
    "ico": "image/x-icon",
}
# the page's own code and styles only; inline scripts, frames and plug-ins are refused
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
# training settings worth showing on the model card (the rest stay in config.json)
_CARD_PARAMS = ("d_model", "n_layers", "n_heads", "max_len", "dropout", "loss", "n_negatives",
                "epochs", "batch_size", "lr", "weight_decay", "patience", "mixer", "l2", "k",
                "shrinkage", "mask_prob", "privacy_epsilon", "privacy_delta", "privacy_clip")
_WEIGHT_DIGITS = 4
MAX_SHOWN_HISTORY = 200

UserPath = Annotated[PathId, Path(description="Raw user id, percent-encoded ('/' as %2F)")]


# ---- schemas ----------------------------------------------------------------------------------
class HistoryItem(BaseModel):
    position: int = Field(description="Position in the sequence (0 = oldest)")
    item: str
    name: str | None = None
    category: str | None = None
    live: bool = Field(description="Arrived as a live event (not in the model's training data)")


class AttentionMaps(BaseModel):
    offset: int = Field(description="Sequence position of the first attended item")
    length: int = Field(description="Items the model sees (the last max_len of the sequence)")
    n_layers: int
    n_heads: int
    causal: bool = Field(description="Whether a position attends only to itself and earlier ones "
                                     "(SASRec) or both ways (BERT4Rec); declared by the model")
    layers: list[list[list[list[float]]]] = Field(
        description="layers[l][h][query][key]: weight of key position for query position "
                    "(relative to offset); when causal, keys after the query are 0")
    rollout: list[list[float]] = Field(
        description="rollout[query][key]: attention rollout over all layers (Abnar & Zuidema 2020), "
                    "the weights the explanations start from, computed by the model")


class SequenceAttention(BaseModel):
    user: str | None = None
    known_to_model: bool
    model_version: str
    history_total: int = Field(description="Items in the sequence the model uses")
    history: list[HistoryItem] = Field(description=f"The last {MAX_SHOWN_HISTORY} items at most")
    attention: AttentionMaps | None = Field(None, description="None if the model has no attention")
    unknown_items: list[str] = Field(default_factory=list)


class SessionAttentionRequest(Strict):
    items: list[RawId] = Field(max_length=HARD_MAX_LIST, description="The session's items, oldest first")


class UserHit(BaseModel):
    user: str
    history_length: int


class UserSearch(BaseModel):
    users: list[UserHit]
    total: int = Field(description="Users the model knows")
    matches: int


class ItemHit(BaseModel):
    item: str
    name: str | None = None
    category: str | None = None


class ItemSearch(BaseModel):
    items: list[ItemHit]
    matches: int


class ModelCard(BaseModel):
    version: str
    model: str
    saved_at: str | None = None
    dataset: str | None = None
    protocol: str | None = None
    n_items: int
    n_users: int
    n_interactions: int
    has_catalogue: bool
    categories: list[str]
    explain_method: str
    attention: bool
    params: dict[str, Any]
    metrics: dict[str, Any]
    validation: dict[str, Any] | None = None
    training: list[dict[str, Any]] = Field(description="Per-epoch loss (and validation metric)")
    privacy: dict[str, Any] | None = Field(
        None, description="User-level differential privacy of the weights (epsilon, delta, accountant, "
                          "sample_rate, max_grad_norm, noise_multiplier, ...); null = not private")


# ---- page and static files --------------------------------------------------------------------
def _static(name: str) -> bytes:
    if not _STATIC_NAME.match(name):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    ref = importlib.resources.files(STATIC_PACKAGE).joinpath("static", name)
    if not ref.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return ref.read_bytes()


def _file_response(name: str) -> Response:
    return Response(_static(name), media_type=_MEDIA[name.rsplit(".", 1)[1]],
                    headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP,
                             "X-Content-Type-Options": "nosniff"})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> Response:
    return _file_response("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static_file(name: str) -> Response:
    return _file_response(name)


# ---- search ---------------------------------------------------------------------------------
_indexes: weakref.WeakKeyDictionary[ModelSnapshot, dict] = weakref.WeakKeyDictionary()


def _index(snap: ModelSnapshot) -> dict:
    """Per-snapshot lookup tables (built once per loaded model)."""
    idx = _indexes.get(snap)
    if idx is None:
        users = snap.user_map.raw_ids
        lengths = snap.model.train_data_.lengths.tolist()
        items = snap.item_map.raw_ids
        text = []
        for raw in items:
            e = snap.item_info(raw)
            text.append(" ".join(x for x in (raw, e.name if e else None, e.category if e else None)
                                 if x).lower())
        idx = {"users": users, "user_lower": [u.lower() for u in users], "lengths": lengths,
               "items": items, "item_text": text}
        _indexes[snap] = idx
    return idx


@router.get("/explorer/users", response_model=UserSearch, summary="Find users the model knows")
async def search_users(request: Request, service: ServiceDep,
                       q: Annotated[str, Query(max_length=256, description="Part of a raw user id")] = "",
                       limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> FastJSON:
    snap = snapshot(request, service)
    idx = await run_in_threadpool(_index, snap)
    needle = q.strip().lower()
    gone = service.is_deleted_dense
    # deleted users are not listed, counted or found: their fit history is hidden everywhere
    hits = [i for i, u in enumerate(idx["user_lower"]) if (not needle or needle in u) and not gone(snap, i)]
    if needle:  # exact id first, then shorter ids (u1 before u10)
        hits = sorted(hits, key=lambda i: (idx["user_lower"][i] != needle, len(idx["users"][i]), i))
    shown = [{"user": idx["users"][i], "history_length": int(idx["lengths"][i])}
             for i in hits[offset:offset + limit]]
    total = len(idx["users"]) - service.deleted_model_users(snap)
    return FastJSON({"users": shown, "total": total, "matches": len(hits)})


@router.get("/explorer/items", response_model=ItemSearch,
            summary="Find items by id, name or category")
async def search_items(request: Request, service: ServiceDep,
                       q: Annotated[str, Query(max_length=256)] = "",
                       limit: Annotated[int, Query(ge=1, le=200)] = 20,
                       offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> FastJSON:
    snap = snapshot(request, service)
    idx = await run_in_threadpool(_index, snap)
    words = q.strip().lower().split()
    blocked = service.catalogue.blocked  # hidden, deleted and expired items are never listed
    hits = [i for i, t in enumerate(idx["item_text"])
            if all(w in t for w in words) and not blocked(idx["items"][i])]
    out = []
    for i in hits[offset:offset + limit]:
        raw = idx["items"][i]
        d = service.catalogue.describe(snap, raw)
        out.append({"item": raw, "name": d["name"], "category": d["category"]})
    return FastJSON({"items": out, "matches": len(hits)})


# ---- model card -----------------------------------------------------------------------------
@router.get("/explorer/model", response_model=ModelCard,
            summary="Model card: dataset, training settings, offline metrics, version")
async def model_card(request: Request, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    info = snap.info()
    config = snap.config
    bundle = config.get("info") or {}
    params = config.get("params") or {}
    model = snap.model
    validation = bundle.get("validation")
    vhist = (validation or {}).get("history") or []
    history = model.training_summary()["history"] if model.supports(Capability.REFIT) else []
    training = [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    if validation is not None:
        validation = {k: v for k, v in validation.items() if k != "history"}
        validation["history"] = [{k: v for k, v in h.items() if k in ("epoch", "loss", "NDCG@10")}
                                 for h in vhist]
    card = {
        "version": snap.version, "model": snap.model_name, "saved_at": info.get("saved_at"),
        "dataset": _dataset_name(bundle.get("dataset") or bundle.get("data")),
        "protocol": bundle.get("protocol"),
        "n_items": snap.n_items, "n_users": len(snap.user_map) - service.deleted_model_users(snap),
        "n_interactions": int(model.train_data_.n_interactions),
        "has_catalogue": snap.catalogue is not None, "categories": sorted(snap.category_codes),
        "explain_method": snap.explain_method,
        "attention": model.supports(Capability.ATTENTION),
        "params": {k: params[k] for k in _CARD_PARAMS if k in params},
        "metrics": _test_metrics(info.get("metrics") or {}), "validation": validation, "training": training,
        "privacy": (config.get("extra") or {}).get("privacy"),
    }
    return FastJSON(to_jsonable(card))


def _dataset_name(value: Any) -> Any:
    # a dataset given as a directory is shown by its name: no server paths in responses
    return redact_paths(value).replace("…/", "") if isinstance(value, str) else value


# ---- attention ------------------------------------------------------------------------------
def _sequence_payload(snap: ModelSnapshot, seq: np.ndarray, n_fit: int, user: str | None,
                      known: bool, unknown: list[str]) -> dict[str, Any]:
    start = max(0, len(seq) - MAX_SHOWN_HISTORY)
    history = []
    for pos in range(start, len(seq)):
        raw = snap.raw_item(int(seq[pos]))
        e = snap.item_info(raw)
        history.append({"position": pos, "item": raw, "name": e.name if e else None,
                        "category": e.category if e else None, "live": pos >= n_fit})
    attention = None
    model = snap.model
    if len(seq) and model.supports(Capability.ATTENTION):
        maps = model.attention_maps([np.asarray(seq, dtype=np.int64)])
        L = int(maps.lengths[0])
        layers = [np.round(w.double().numpy(), _WEIGHT_DIGITS).tolist() for w in maps.history_maps(0)]
        rollout = np.round(maps.rollout(0)[:L, :L].double().numpy(), _WEIGHT_DIGITS).tolist()
        attention = {"offset": maps.offset(0, len(seq)), "length": L, "n_layers": len(layers),
                     "n_heads": len(layers[0]) if layers else 0, "causal": maps.causal,
                     "layers": layers, "rollout": rollout}
    return {"user": user, "known_to_model": known, "model_version": snap.version,
            "history_total": int(len(seq)), "history": history, "attention": attention,
            "unknown_items": unknown}


@router.get("/users/{user}/attention", response_model=SequenceAttention,
            summary="A user's sequence with item names and the attention over it, per layer and head")
async def user_attention(request: Request, user: UserPath, service: ServiceDep) -> FastJSON:
    snap = snapshot(request, service)
    entry = service.cached_user(user)
    if entry is None:
        entry = await run_in_threadpool(service.load_user, user)
    seq = entry.sequence(snap, user)
    fit = None if entry.tombstoned else snap.fit_history(user)
    n_fit = 0 if fit is None else len(fit)
    _, unknown = snap.encode_items(entry.items)
    out = await run_in_threadpool(_sequence_payload, snap, seq, n_fit, user,
                                  service.is_known(snap, user, entry), unknown)
    return FastJSON(out)


@router.post("/sessions/attention", response_model=SequenceAttention,
             summary="An anonymous session with item names and the attention over it")
async def session_attention(request: Request, body: SessionAttentionRequest,
                            service: ServiceDep) -> FastJSON:
    check_limit("length of items", len(body.items), service.settings.max_history)
    snap = snapshot(request, service)
    seq, unknown = snap.encode_items(body.items)
    out = await run_in_threadpool(_sequence_payload, snap, seq, 0, None, True, unknown)
    for h in out["history"]:
        h["live"] = False
    return FastJSON(out)


def _test_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The bundle's test figures: ``test.metrics`` of metrics.json (older bundles kept them flat)."""
    if "test" in metrics or "validation" in metrics:
        return (metrics.get("test") or {}).get("metrics") or {}
    return metrics
