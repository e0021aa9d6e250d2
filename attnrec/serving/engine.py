"""An immutable snapshot of one loaded bundle and the hot-path scoring on it.

A request takes the current :class:`ModelSnapshot` once and uses only that
object, so a hot reload (which swaps the reference) never mixes two models in
one response and requests in flight finish on the model they started with.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from attnrec import ranking, retrieval
from attnrec.data.catalogue import CatalogueEntry, read_catalogue
from attnrec.jsonable import to_jsonable
from attnrec.models.base import Capability, Recommender

log = logging.getLogger(__name__)


# filter masks cached per snapshot (keys come from clients): at most this many bytes
MASK_CACHE_BYTES = 16 * 2**20


def remember_mask(cache: dict, key: tuple, mask: torch.Tensor) -> None:
    """Keep ``mask`` in ``cache`` while the cache stays within :data:`MASK_CACHE_BYTES`."""
    if (len(cache) + 1) * mask.numel() * mask.element_size() <= MASK_CACHE_BYTES:
        cache[key] = mask


def mask_cache_bytes(cache: dict) -> int:
    return sum(m.numel() * m.element_size() for m in cache.values())


class BadRequest(ValueError):
    """A request that is well-formed but cannot be served as asked (422)."""


def bundle_version(path: Path, config: dict) -> str:
    """``<model>-<saved_at>-<12 hex of the bundle files' hash>``."""
    h = hashlib.blake2b(digest_size=16)
    for name in ("config.json", "weights.safetensors", "sequences.npz", "items.csv"):
        f = path / name
        if not f.exists():
            continue
        h.update(name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    saved = str(config.get("saved_at", "unsaved")).replace(":", "").replace("-", "")
    return f"{config.get('model', 'model')}-{saved}-{h.hexdigest()[:12]}"


class MicroBatcher:
    """Coalesce concurrent single-history forwards into one batched forward.

    Requests arrive on the thread pool one user at a time; a network forward for
    a batch of 10 costs little more than for one, whereas 10 concurrent forwards
    on 2 cores fight over them. The first waiting thread becomes the leader,
    scores everything queued (up to ``max_batch``) and wakes the others.
    """

    def __init__(self, fn, max_batch: int = 64):
        self.fn = fn
        self.max_batch = max_batch
        self._cv = threading.Condition()
        self._pending: list[list] = []  # [history, result, error]
        self._busy = False

    def __call__(self, history: np.ndarray) -> torch.Tensor:
        slot = [history, None, None]
        done = lambda: slot[1] is not None or slot[2] is not None  # noqa: E731
        with self._cv:
            self._pending.append(slot)
        while True:
            with self._cv:
                while self._busy and not done():
                    self._cv.wait()
                if done():
                    break
                # lead: score the oldest queued histories (ours may be further back: loop)
                self._busy = True
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            try:
                for s, row in zip(batch, self.fn([s[0] for s in batch])):
                    s[1] = row
            except BaseException as e:  # every waiter of this batch gets the error
                for s in batch:
                    s[2] = e
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        if slot[2] is not None:
            raise slot[2]
        return slot[1]


class ModelSnapshot:
    """A loaded bundle plus everything precomputed for serving it."""

    def __init__(self, path: Path, model: Recommender, version: str, config: dict,
                 catalogue: dict[str, CatalogueEntry] | None, explain_top: int = 5, index: str = "auto"):
        self.path = path
        self.model = model
        self.version = version
        self.config = config
        self.catalogue = catalogue
        self.explain_top = explain_top
        self.n_items = int(model.n_items_)
        self.item_map = model.item_map_
        self.user_map = model.user_map_
        self.model_name = model.model_name
        # the stored events this bundle already contains (written by `attnrec retrain`):
        # only later ones are appended to a user's fit-time history
        from attnrec.continuous import LAST_EVENT_ID, STORE_ID

        info = config.get("info") or {}
        self.event_store_id: str | None = info.get(STORE_ID)
        self.last_event_id = int(info.get(LAST_EVENT_ID) or 0)
        self.included_event_id = 0  # set by bind_store before the snapshot is served
        self.item_counts = np.asarray(model.item_counts_, dtype=np.float32)
        self._raw_items = np.asarray(self.item_map.raw_ids, dtype=object)
        self._build_categories()
        self._setup_scorer()
        self._setup_index(index)

    # ---- ids -------------------------------------------------------------
    def encode_items(self, raws: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Dense ids of the known items (order kept) and the unknown raw ids."""
        get = self.item_map.get
        dense, unknown = [], []
        for r in raws:
            d = get(r)
            if d is None:
                unknown.append(r)
            else:
                dense.append(d)
        return np.asarray(dense, dtype=np.int64), unknown

    def raw_item(self, dense: int) -> str:
        return self._raw_items[int(dense) - 1]

    def raw_items(self, dense: np.ndarray | list[int]) -> list[str]:
        return self._raw_items[np.asarray(dense, dtype=np.int64) - 1].tolist()

    def fit_history(self, user: str) -> np.ndarray | None:
        u = self.user_map.get(user)
        return None if u is None else self.model.user_history(u)

    def bind_store(self, store_id: str) -> "ModelSnapshot":
        """Serve against the event store ``store_id``: stored events with an id up to
        ``included_event_id`` are in the fit-time histories already (ids of another store are not)."""
        self.included_event_id = self.last_event_id if self.event_store_id == store_id else 0
        return self

    def item_info(self, raw: str) -> CatalogueEntry | None:
        return self.catalogue.get(raw) if self.catalogue is not None else None

    # ---- categories ------------------------------------------------------
    def _build_categories(self) -> None:
        self.category_codes: dict[str, int] = {}
        self._item_category = np.full(self.n_items + 1, -1, dtype=np.int64)
        self._mask_cache: dict[tuple, torch.Tensor] = {}
        if self.catalogue is None:
            return
        for raw, entry in self.catalogue.items():
            d = self.item_map.get(raw)
            if d is None or entry.category is None:
                continue
            code = self.category_codes.setdefault(entry.category, len(self.category_codes))
            self._item_category[d] = code
        self._item_category_t = torch.from_numpy(self._item_category)

    def filter_cache_bytes(self) -> int:
        return mask_cache_bytes(self._mask_cache)

    def item_categories(self) -> np.ndarray:
        """Category code of every dense item (-1: none), ``(n_items + 1,)``."""
        return self._item_category

    def allowed_mask(self, categories: Sequence[str], exclude_categories: Sequence[str]) -> torch.Tensor | None:
        """Boolean ``(n_items + 1,)`` mask of recommendable items, or None for all."""
        if not categories and not exclude_categories:
            return None
        if self.catalogue is None:
            raise BadRequest("category filters need a catalogue, and this model bundle has no items.csv")
        key = (tuple(sorted(set(categories))), tuple(sorted(set(exclude_categories))))
        mask = self._mask_cache.get(key)
        if mask is not None:
            return mask
        unknown = [c for c in (*key[0], *key[1]) if c not in self.category_codes]
        if unknown:
            known = ", ".join(sorted(self.category_codes)[:20])
            raise BadRequest(f"unknown categories {unknown}; known categories include: {known}")
        cats = self._item_category_t
        if key[0]:
            mask = torch.isin(cats, torch.tensor([self.category_codes[c] for c in key[0]]))
        else:
            mask = torch.ones(self.n_items + 1, dtype=torch.bool)
        if key[1]:
            mask &= ~torch.isin(cats, torch.tensor([self.category_codes[c] for c in key[1]]))
        mask[0] = False
        remember_mask(self._mask_cache, key, mask)
        return mask

    # ---- scoring ---------------------------------------------------------
    def _setup_scorer(self) -> None:
        m = self.model
        # what the model declares decides how it is served (never its name)
        self.inline = m.light_scoring  # cheap enough to run on the event loop
        self.explain_method = m.explain_method if m.supports(Capability.EXPLAIN) else "none"
        self._batched_forward = MicroBatcher(self._forward_many)
        self._batched_explain = MicroBatcher(self._explain_many)

    def _setup_index(self, kind: str) -> None:
        """A FAISS index over the item vectors of vector models (None: score every item)."""
        self.index = None
        resolved = retrieval.index_kind(self.model, kind)
        if resolved is None:
            return
        vectors = self.model.item_vectors()
        cached = self.path / f"index-{resolved}-{self.version}.faiss"  # the version names the weights
        if cached.exists():
            self.index = retrieval.ItemIndex.load(cached, vectors, resolved)
            log.info("top-k from the %s index %s", resolved, cached.name)
            return
        self.index = retrieval.ItemIndex.build(vectors, resolved)
        try:  # building HNSW over millions of items takes minutes: keep it for the next load
            self.index.save(cached)
        except OSError:
            log.info("bundle directory not writable; the %s index is rebuilt on every load", resolved)

    def retrieve(self, history: np.ndarray, k: int, seen: np.ndarray | None = None,
                 exclude: np.ndarray | None = None, allowed: torch.Tensor | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k dense ids and scores from the FAISS index, exclusions applied (needs ``self.index``)."""
        q = self.model.query_vectors([history])
        parts = [np.asarray(x, dtype=np.int64) for x in (seen, exclude) if x is not None and len(x)]
        banned = np.concatenate(parts) if parts else None
        ids, sc = self.index.search(q, k, exclude=[banned],
                                    allowed=None if allowed is None else allowed.numpy())
        keep = ids[0] > 0
        return ids[0][keep], sc[0][keep]

    def score(self, history: np.ndarray) -> torch.Tensor:
        """Fresh float32 scores ``(n_items + 1,)`` for one history; column 0 is -inf."""
        history = np.asarray(history, dtype=np.int64)
        if self.inline:
            return self.model.score([history])[0]
        return self._batched_forward(history)  # a network forward: batched with concurrent requests

    def popularity_scores(self) -> torch.Tensor:
        """The model's popularity fallback (for users it cannot place); do not modify."""
        return self.model.popularity_scores()

    def similar_scores(self, item: int) -> torch.Tensor:
        """Similarity of every item to dense ``item`` (refused for models without ``SIMILAR_ITEMS``)."""
        if not self.model.supports(Capability.SIMILAR_ITEMS):
            raise BadRequest(f"the served model ({self.model_name}) has no item-item similarity; "
                             "serve ease, itemknn, sasrec, bert4rec or text-sim for similar items")
        return self.model.similar_scores([int(item)])[0]

    def _forward_many(self, histories: list[np.ndarray]) -> list[torch.Tensor]:
        return list(self.model.score(histories))

    def _explain_many(self, requests: list[tuple[np.ndarray, np.ndarray]]) -> list[list]:
        return self.model.explain_items([h for h, _ in requests], [r for _, r in requests])

    def rank(self, scores: torch.Tensor, k: int, seen: np.ndarray | None = None,
             exclude: np.ndarray | None = None, allowed: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k dense ids and scores after exclusions (:func:`attnrec.ranking.rank_row`)."""
        return ranking.rank_row(scores, k, seen, exclude, allowed)

    # ---- explanations ----------------------------------------------------
    def explain(self, history: np.ndarray, recs: np.ndarray) -> tuple[str, list[list[tuple[int, int, float]]]]:
        """Per recommended item: ``(position in history, dense item, weight)``, strongest first."""
        if len(recs) == 0:
            return self.explain_method, []
        if len(history) == 0 or self.explain_method == "none":
            return self.explain_method, [[] for _ in recs]
        request = (np.asarray(history, dtype=np.int64), np.asarray(recs, dtype=np.int64))
        explained = self._explain_many([request])[0] if self.inline else self._batched_explain(request)
        return self.explain_method, [e.strongest(self.explain_top) for e in explained]

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model_name,
            "n_items": self.n_items,
            "n_users": len(self.user_map),
            "saved_at": self.config.get("saved_at"),
            "has_catalogue": self.catalogue is not None,
            "metrics": to_jsonable(self.model.bundle_metrics_ or {}),
        }


def load_snapshot(path: str | Path, explain_top: int = 5, index: str = "auto") -> ModelSnapshot:
    """Load a bundle (no pickle: JSON, safetensors and ``allow_pickle=False`` npz)."""
    import json

    path = Path(path).resolve()
    config = json.loads((path / "config.json").read_text())
    version = bundle_version(path, config)
    model = Recommender.load(path)
    catalogue = read_catalogue(path / "items.csv") if (path / "items.csv").exists() else None
    snap = ModelSnapshot(path, model, version, config, catalogue, explain_top, index)
    log.info("loaded %s (%d items, %d users, catalogue: %s)", version, snap.n_items,
             len(snap.user_map), "yes" if catalogue else "no")
    return snap
