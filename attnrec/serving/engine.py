"""An immutable snapshot of one loaded bundle and the hot-path scoring on it.

A request takes the current :class:`ModelSnapshot` once and uses only that
object, so a hot reload (which swaps the reference) never mixes two models in
one response and requests in flight finish on the model they started with.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import threading
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from attnrec.data.catalogue import CatalogueEntry, read_catalogue
from attnrec.models.base import Recommender, top_k

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


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
        self.model_name = getattr(model, "model_name", type(model).__name__)
        # the stored events this bundle already contains (written by `attnrec retrain`):
        # only later ones are appended to a user's fit-time history
        from attnrec.continuous import LAST_EVENT_ID, STORE_ID

        info = config.get("info") or {}
        self.event_store_id: str | None = info.get(STORE_ID)
        self.last_event_id = int(info.get(LAST_EVENT_ID) or 0)
        self.included_event_id = 0  # set by bind_store before the snapshot is served
        counts = np.asarray(model.item_counts_, dtype=np.float32)
        self.item_counts = counts
        # popularity fallback: training counts; rank() breaks ties towards the lower id
        pop = torch.from_numpy(counts.copy())
        pop[0] = NEG_INF
        self.pop_scores = pop
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
        if len(self._mask_cache) < 256:  # bounded: keys come from clients
            self._mask_cache[key] = mask
        return mask

    # ---- scoring ---------------------------------------------------------
    def _setup_scorer(self) -> None:
        """Pick a lean single-history scorer; falls back to ``model.score``."""
        m = self.model
        self.explain_method = "none"
        self._item_weights = None  # dense (I+1, I) EASE weights
        self._item_sim = None  # sparse (I+1, I+1) kNN similarities
        self.inline = True  # cheap enough to run on the event loop
        self._batched_forward = MicroBatcher(self._forward_many)
        self._batched_rollout = MicroBatcher(self._rollout_many)
        name = self.model_name
        if name == "ease" and isinstance(getattr(m, "weights_", None), torch.Tensor):
            self._item_weights = m.weights_.float().contiguous()
            self.explain_method = "item-item weights"
        elif name == "itemknn" and getattr(m, "similarity_", None) is not None:
            self._item_sim = m.similarity_.tocsr()
            self.explain_method = "item-item weights"
        elif name == "pop":
            self.explain_method = "popularity"
        else:
            self.inline = False  # a network forward: keep it off the event loop
            if hasattr(m, "attention_weights"):
                self.explain_method = "attention"
        self._explain_fn = None
        if self.explain_method == "attention":
            try:
                self._explain_fn = importlib.import_module("attnrec.explain").explain
            except (ImportError, AttributeError):
                log.info("attnrec.explain not available; explaining with last-layer attention")

    def _setup_index(self, kind: str) -> None:
        """A FAISS index over the item vectors of vector models (None: score every item)."""
        from attnrec import retrieval

        self.index = None
        resolved = retrieval.choose_kind(self.n_items, kind)
        if not retrieval.supports_vectors(self.model) or (kind == "auto" and resolved == "exact"):
            return
        vectors = retrieval.item_vectors(self.model)
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
        from attnrec.retrieval import user_vectors

        q = user_vectors(self.model, [history])
        parts = [np.asarray(x, dtype=np.int64) for x in (seen, exclude) if x is not None and len(x)]
        banned = np.concatenate(parts) if parts else None
        ids, sc = self.index.search(q, k, exclude=[banned],
                                    allowed=None if allowed is None else allowed.numpy())
        keep = ids[0] > 0
        return ids[0][keep], sc[0][keep]

    def score(self, history: np.ndarray) -> torch.Tensor:
        """Fresh float32 scores ``(n_items + 1,)`` for one history; column 0 is -inf."""
        n = self.n_items + 1
        if self._item_weights is not None:
            s = torch.empty(n)
            if len(history):
                # sum of the history items' rows in one kernel, without materialising them
                u = torch.from_numpy(np.unique(history))[None]
                s[1:] = F.embedding_bag(u, self._item_weights, mode="sum")[0]
            else:
                s[1:] = 0.0
        elif self._item_sim is not None:
            if len(history):
                row = np.asarray(self._item_sim[np.unique(history)].sum(axis=0), dtype=np.float32).ravel()
                s = torch.from_numpy(row)
            else:
                s = torch.zeros(n)
        else:
            s = self._batched_forward(np.asarray(history, dtype=np.int64))
        s[0] = NEG_INF
        return s

    def _rollout_many(self, histories: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        from attnrec.explain import _attention_rows

        with torch.no_grad():
            rows, offsets = _attention_rows(self.model, histories, "rollout")
        return list(zip(rows, offsets))

    def _forward_many(self, histories: list[np.ndarray]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = self.model.score(histories).float()
        return [row.clone() for row in out]

    def rank(self, scores: torch.Tensor, k: int, seen: np.ndarray | None = None,
             exclude: np.ndarray | None = None, allowed: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k dense ids and scores after exclusions (modifies ``scores``)."""
        if seen is not None and len(seen):
            scores[torch.from_numpy(seen)] = NEG_INF
        if exclude is not None and len(exclude):
            scores[torch.from_numpy(exclude)] = NEG_INF
        if allowed is not None:
            scores.masked_fill_(~allowed, NEG_INF)
        k = min(k, scores.shape[0])
        vals, idx = torch.topk(scores, k)
        # topk's order among equal scores is unspecified: on any tie at or inside the
        # boundary use the model contract's stable tie-break (lower id first)
        if k and (int((scores >= vals[-1]).sum()) > k or bool((vals[:-1] == vals[1:]).any())):
            i2, v2 = top_k(scores[None], k)
            idx, vals = i2[0], v2[0]
        ids, sc = idx.numpy(), vals.numpy()
        keep = (ids > 0) & np.isfinite(sc)
        return ids[keep], sc[keep]

    # ---- explanations ----------------------------------------------------
    def explain(self, history: np.ndarray, recs: np.ndarray) -> tuple[str, list[list[tuple[int, int, float]]]]:
        """Per recommended item: ``(position in history, dense item, weight)``, strongest first."""
        if len(recs) == 0:
            return self.explain_method, []
        if len(history) == 0 or self.explain_method in ("none", "popularity"):
            return self.explain_method, [[] for _ in recs]
        if self.explain_method == "item-item weights":
            return self.explain_method, self._explain_item_item(history, recs)
        return "attention", self._explain_attention(history, recs)

    def _explain_item_item(self, history: np.ndarray, recs: np.ndarray) -> list[list[tuple[int, int, float]]]:
        # contribution of history item h to the score of item j is W[h, j] (EASE) or
        # sim(h, j) (kNN): exactly the terms the score sums, so the split is faithful
        rev = history[::-1]
        uniq, first_in_rev = np.unique(rev, return_index=True)
        pos = len(history) - 1 - first_in_rev  # latest position of each distinct item
        if self._item_weights is not None:
            # gather just the (history item, recommended item) weights, H x k
            C = self._item_weights[torch.from_numpy(uniq)[:, None], torch.from_numpy(recs - 1)[None, :]].numpy()
        else:
            C = np.asarray(self._item_sim[uniq][:, recs].todense(), dtype=np.float32)
        return _top_contributions(C, uniq, pos, self.explain_top)

    def _explain_attention(self, history: np.ndarray, recs: np.ndarray) -> list[list[tuple[int, int, float]]]:
        if self._explain_fn is not None:
            # weights depend on the candidate only for target-attention models
            # (explain_weights); otherwise one pass serves every recommended item
            per_item = hasattr(self.model, "explain_weights")
            if not per_item:  # one rollout per history, batched with concurrent requests
                w, off = self._batched_rollout(np.asarray(history, dtype=np.int64))
                order = np.argsort(-w, kind="stable")[: self.explain_top]
                row = [(off + int(p), int(history[off + p]), float(w[p])) for p in order]
                return [row for _ in recs]
            out, shared = [], None
            for item in recs:
                if per_item or shared is None:
                    triples = self._explain_fn(self.model, history, int(item))
                    triples = sorted(((int(p), int(i), float(w)) for p, i, w in triples),
                                     key=lambda t: -t[2])[: self.explain_top]
                    shared = triples
                out.append(shared)
            return out
        # last layer, last query position, averaged over heads: what the state that
        # scores every item attended to (the same for every recommended item)
        with torch.no_grad():
            weights, lens = self.model.attention_weights([np.asarray(history, dtype=np.int64)])
        L = int(lens[0])
        w = weights[-1][0].mean(0)[L - 1, :L].numpy()
        offset = len(history) - L
        w = w / max(float(np.abs(w).sum()), 1e-12)
        order = np.argsort(-w, kind="stable")[: self.explain_top]
        row = [(offset + int(p), int(history[offset + p]), float(w[p])) for p in order if w[p] > 0]
        return [row for _ in recs]

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": self.model_name,
            "n_items": self.n_items,
            "n_users": len(self.user_map),
            "saved_at": self.config.get("saved_at"),
            "has_catalogue": self.catalogue is not None,
            "metrics": _json_safe(getattr(self.model, "bundle_metrics_", {}) or {}),
        }


def _top_contributions(C: np.ndarray, uniq: np.ndarray, pos: np.ndarray, top: int):
    """Columns of ``C`` (history item x recommended item) -> strongest normalised shares."""
    total = np.abs(C).sum(axis=0)
    W = C / np.where(total > 0, total, 1.0)
    order = np.argsort(-W, axis=0, kind="stable")[:top]  # (top, k)
    w_top = W[order, np.arange(C.shape[1])]
    P, I, V = pos[order].T.tolist(), uniq[order].T.tolist(), w_top.T.tolist()
    return [[(p, i, w) for p, i, w in zip(P[j], I[j], V[j]) if w != 0] for j in range(C.shape[1])]


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


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
