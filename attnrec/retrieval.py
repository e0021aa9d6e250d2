"""Top-k retrieval over large catalogues with a FAISS index.

Models that declare the ``VECTORS`` capability (their score is an inner
product ``model.query_vectors(histories) @ model.item_vectors().T``: SASRec,
BERT4Rec) can be served from an index over the item vectors instead of scoring
the whole catalogue:

* ``"exact"``: ``IndexFlatIP``, brute-force inner product (exact; the default
  below :data:`AUTO_EXACT_MAX_ITEMS` items);
* ``"hnsw"``: ``IndexHNSWFlat`` with inner product (graph search; on our
  measurements it reached higher recall at equal ``efSearch`` than HNSW on the
  MIPS-to-L2 transform of Bachrach et al. 2014, so the transform is not used);
* ``"ivf"``: ``IndexIVFFlat`` with inner product, ``nprobe`` lists searched.

``kind="auto"`` picks ``exact`` for small catalogues and ``ivf`` otherwise: on
1M clustered 64-d item vectors (``benchmarks/scale.py``, RESULTS.md) IVF with
``nprobe = nlist / 16`` reached recall@10 0.97 at ~1.4 ms a query, where HNSW
(M=32) needed ``efSearch`` beyond 512 for 0.92 at the same latency.

Exclusions (already-seen items, explicit excludes, an ``allowed`` mask such as
a category filter) are applied *after* the search: the index is over-fetched
by the number of excluded items, re-queried with a 4x larger k for rows that
still lack results, and rows that an ANN search cannot fill fall back to an
exact scan, so a row gets ``k`` results whenever ``k`` admissible items exist.
Returned scores are exact inner products, never the transformed distances, and
are ordered by :mod:`attnrec.ranking`'s rule (equal scores: lower item id first).

Models without item vectors (EASE, kNN, popularity) use the exact full-score
path (:meth:`Recommender.recommend`). faiss is imported lazily.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from attnrec.models.base import Capability, Recommender
from attnrec.ranking import admissible, exclusion_mask, top_k, top_k_of

log = logging.getLogger(__name__)

KINDS = ("auto", "exact", "hnsw", "ivf")
AUTO_EXACT_MAX_ITEMS = 100_000  # below this a flat scan is ~1 ms/query: no approximation needed
ANN_MAX_FETCH = 4096  # beyond this an exact scan of the row is cheaper than a wider ANN search


def _faiss():
    import faiss  # lazy: optional at import time, heavy to load

    return faiss


def choose_kind(n_items: int, kind: str = "auto") -> str:
    """Resolve ``auto`` by catalogue size; validate explicit kinds."""
    if kind not in KINDS:
        raise ValueError(f"index must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    return "exact" if n_items <= AUTO_EXACT_MAX_ITEMS else "ivf"


def index_kind(model: Recommender, kind: str | None) -> str | None:
    """The index to build for ``model``: None for models without ``VECTORS``, for ``kind=None``
    and where ``auto`` resolves to an exact scan (scoring every item is then as fast)."""
    if kind is None or not model.supports(Capability.VECTORS):
        return None
    resolved = choose_kind(model.n_items_, kind)
    return None if kind == "auto" and resolved == "exact" else resolved


def default_nprobe(nlist: int) -> int:
    """Lists an IVF query visits: 1/16 of them (recall@10 ~0.97 at 1M items, 4,000 lists),
    but at least 16 (or all): with few lists one list is most of the catalogue's neighbours."""
    return max(nlist // 16, min(nlist, 16))


class ItemIndex:
    """A FAISS index over item vectors ``(n_items + 1, d)`` (row 0, padding, is not indexed).

    Dense item ``i`` is faiss id ``i - 1``. Build with :meth:`build`; query with
    :meth:`search`.
    """

    def __init__(self, index, vectors: np.ndarray, kind: str):
        self.index = index
        self.vectors = vectors  # (n_items + 1, d): exact rescoring and exact fallback
        self.kind = kind
        self.n_items = vectors.shape[0] - 1
        self.dim = vectors.shape[1]

    # ---- construction ----------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray | torch.Tensor, kind: str = "auto", *, hnsw_m: int = 32,
              ef_construction: int = 100, ef_search: int = 256, nlist: int | None = None,
              nprobe: int | None = None, seed: int = 0) -> "ItemIndex":
        """Index ``vectors`` (``(n_items + 1, d)``, row 0 padding)."""
        faiss = _faiss()
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().float().cpu().numpy()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, d = vectors.shape[0] - 1, vectors.shape[1]
        if n < 1:
            raise ValueError("cannot index an empty catalogue")
        kind = choose_kind(n, kind)
        X = vectors[1:]
        t0 = time.perf_counter()
        if kind == "exact":
            index = faiss.IndexFlatIP(d)
            index.add(X)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
            index.add(X)
        else:
            nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))  # faiss wants >= 39 points per list
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = X if n <= 64 * nlist else X[rng.choice(n, 64 * nlist, replace=False)]  # k-means needs ~40+ per list
            index.train(sample)
            index.add(X)
            index.nprobe = min(nprobe or default_nprobe(nlist), nlist)
        log.info("built %s index over %d items (d=%d) in %.1fs", kind, n, d, time.perf_counter() - t0)
        return cls(index, vectors, kind)

    def save(self, path: str | Path) -> None:
        """Write the faiss index to ``path`` (vectors are the model's; they are not stored)."""
        _faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, vectors: np.ndarray, kind: str) -> "ItemIndex":
        index = _faiss().read_index(str(path))
        return cls(index, np.ascontiguousarray(vectors, dtype=np.float32), kind)

    def set_search_params(self, ef_search: int | None = None, nprobe: int | None = None) -> None:
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = int(nprobe)

    # ---- search ----------------------------------------------------------
    def search_raw(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered top-``k``: dense ids (0 = no result) and exact inner-product scores."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.n_items)
        _, I = self.index.search(q, k)
        ids = I.astype(np.int64) + 1  # faiss -1 (missing) becomes 0
        # exact inner products of the candidates (cheap: k x d per query)
        scores = np.einsum("bd,bkd->bk", queries.astype(np.float32), self.vectors[ids])
        # order by the recomputed scores (faiss's float sums can swap near-ties)
        return top_k_of(ids, scores)

    def search(self, queries: np.ndarray, k: int, exclude: Sequence[np.ndarray | None] | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` admissible items per query.

        ``exclude[b]``: dense ids that row ``b`` must not get (history, explicit
        excludes); ``allowed``: boolean ``(n_items + 1,)`` mask shared by all
        rows. Returns ``(ids, scores)`` of shape ``(B, k)``, best first; id 0 /
        ``-inf`` pad a row only when fewer than ``k`` admissible items exist.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        B, n = len(queries), self.n_items
        out_ids = np.zeros((B, k), np.int64)
        out_sc = np.full((B, k), -np.inf, np.float32)
        if B == 0:
            return out_ids, out_sc
        banned = []  # per row: sorted unique excluded ids that are otherwise allowed
        n_allowed = n if allowed is None else int(allowed[1:].sum())
        for b in range(B):
            e = np.unique(np.asarray(exclude[b], dtype=np.int64)) if exclude is not None and exclude[b] is not None \
                else np.zeros(0, np.int64)
            e = e[(e > 0) & (e <= n)]
            if allowed is not None:
                e = e[allowed[e]]
            banned.append(e)
        need = np.array([min(k, n_allowed - len(e)) for e in banned])  # results that exist
        # over-fetch: room for every excluded item, scaled up when a filter drops a share of items
        frac = max(n_allowed / n, 1e-6)
        fetch = np.array([int(min(n, np.ceil((k + len(e)) / frac) + 8)) for e in banned])
        pending = np.flatnonzero(need > 0)
        rounds = 0
        while len(pending):
            rounds += 1
            f = int(fetch[pending].max())
            ids, sc = self.search_raw(queries[pending], f)
            still = []
            for row, b in enumerate(pending):
                keep = admissible(ids[row], banned[b], allowed)
                got_ids, got_sc = ids[row][keep][:k], sc[row][keep][:k]
                if len(got_ids) >= need[b] or (self.kind == "exact" and f >= n):
                    out_ids[b, : len(got_ids)] = got_ids
                    out_sc[b, : len(got_sc)] = got_sc
                else:
                    still.append(b)
            pending = np.asarray(still, dtype=np.int64)
            if len(pending) == 0:
                break
            if self.kind != "exact" and f >= min(n, ANN_MAX_FETCH):
                # an ANN search may never reach some items: scan these rows exactly
                for b in pending:
                    out_ids[b], out_sc[b] = self._exact_row(queries[b], k, banned[b], allowed)
                break
            fetch[pending] = np.minimum(n, fetch[pending] * 4)
        if rounds > 1:
            log.debug("retrieval needed %d rounds for %d queries", rounds, B)
        return out_ids, out_sc

    def _exact_row(self, q: np.ndarray, k: int, banned: np.ndarray, allowed: np.ndarray | None):
        s = torch.from_numpy((self.vectors @ q).astype(np.float32))[None]  # (1, n_items + 1)
        mask = exclusion_mask([banned], s.shape[1], allowed=None if allowed is None else torch.from_numpy(allowed))
        idx, vals = top_k(s.masked_fill(mask, float("-inf")), k)
        ids_out = np.zeros(k, np.int64)
        sc_out = np.full(k, -np.inf, np.float32)
        ids_out[: idx.shape[1]], sc_out[: idx.shape[1]] = idx[0].numpy(), vals[0].numpy()
        return ids_out, sc_out


def build_index(model: Recommender, kind: str = "auto", **kw) -> ItemIndex | None:
    """An :class:`ItemIndex` over a vector model's items, or None for models without ``VECTORS``."""
    if not model.supports(Capability.VECTORS):
        return None
    return ItemIndex.build(model.item_vectors(), kind, **kw)


def recommend(model, histories: Sequence[np.ndarray], k: int = 10, exclude_history: bool = True,
              exclude: Sequence[Sequence[int]] | None = None, users: np.ndarray | None = None,
              index: ItemIndex | None = None, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Like :meth:`Recommender.recommend`, answered from ``index`` when given.

    Empty histories (the models' popularity fallback) and models without an
    index go through the exact full-score path.
    """
    if index is None:
        return model.recommend(histories, k=k, exclude_history=exclude_history, exclude=exclude,
                               users=users, batch_size=batch_size)
    histories = [np.asarray(h, dtype=np.int64) for h in histories]
    ids = np.zeros((len(histories), k), np.int64)
    scores = np.full((len(histories), k), -np.inf, np.float32)
    nonempty = np.array([len(h) > 0 for h in histories], dtype=bool)
    if (~nonempty).any():
        rows = np.flatnonzero(~nonempty)
        i2, s2 = model.recommend([histories[r] for r in rows], k=k, exclude_history=exclude_history,
                                 exclude=None if exclude is None else [exclude[r] for r in rows],
                                 users=None if users is None else users[rows], batch_size=batch_size)
        ids[rows], scores[rows] = i2, s2
    rows = np.flatnonzero(nonempty)
    for start in range(0, len(rows), batch_size):
        r = rows[start : start + batch_size]
        q = model.query_vectors([histories[i] for i in r])
        ex = []
        for i in r:
            parts = [histories[i]] if exclude_history else []
            if exclude is not None and exclude[i] is not None and len(exclude[i]):
                parts.append(np.asarray(exclude[i], dtype=np.int64))
            ex.append(np.concatenate(parts) if parts else None)
        ids[r], scores[r] = index.search(q, k, exclude=ex)
    return ids, scores
