"""Strong non-neural baselines: most-popular, item-kNN and EASE.

All three see a history as a set of items (``sequential = False``) and score
with the same contract as the attention models, so every comparison in
``attnrec evaluate`` is like for like.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from attnrec.data.dataset import SequenceData
from attnrec.models.base import Recommender, register
from attnrec.models.capabilities import Capability, Explanation, item_item_explanations

log = logging.getLogger(__name__)


def interaction_matrix(data: SequenceData, binary: bool = True) -> sp.csr_matrix:
    """User x item CSR matrix (``n_users x (n_items + 1)``), column 0 unused."""
    rows = np.repeat(np.arange(data.n_users), data.lengths)
    m = sp.csr_matrix(
        (np.ones(len(data.items), dtype=np.float32), (rows, data.items)),
        shape=(data.n_users, data.n_items + 1),
    )
    m.sum_duplicates()
    if binary:
        m.data[:] = 1.0
    return m


def histories_matrix(histories: Sequence[np.ndarray], n_columns: int) -> sp.csr_matrix:
    """Sparse binary ``(B, n_columns)`` float32 CSR matrix of the histories' items.

    Sparse because histories are short: ``X @ W`` then costs ``nnz x n_items``
    instead of ``B x n_items^2``. A repeated item counts once.
    """
    rows = np.concatenate([np.full(len(h), b) for b, h in enumerate(histories)] or [np.zeros(0, np.int64)])
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories] or [np.zeros(0, np.int64)])
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n_columns))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


@register("pop")
class MostPopular(Recommender):
    """Ranks items by their number of training interactions (ignores the history).

    The order is :func:`attnrec.models.base.popularity_scores` (equally popular
    items newest first): the same order every model falls back to for an empty
    history. Its explanation says just that: no history item is involved.
    """

    capabilities = frozenset({Capability.EXPLAIN})
    explain_method = "popularity"
    light_scoring = True

    def __init__(self) -> None:
        pass

    def _fit(self, data: SequenceData, valid=None, metric=None) -> None:
        self.popularity_scores()  # the whole model: computed once from the fit data

    def _score(self, histories, users=None) -> torch.Tensor:
        return self.popularity_scores().expand(len(histories), -1).clone()

    def explain_items(self, histories, items, users=None) -> list[list[Explanation]]:
        self._check_fitted()
        return [[Explanation.empty(self.explain_method) for _ in row] for row in items]


@register("itemknn")
class ItemKNN(Recommender):
    """Item-based nearest neighbours over the binary user-item matrix.

    ``similarity="cosine"`` or ``"pearson"`` (cosine of item columns centred by
    their mean over users). Each item keeps its ``k_neighbors`` most similar
    items; a history scores an item by the summed similarity to its items.
    ``shrink`` damps similarities of items with few co-occurrences.
    """

    capabilities = frozenset({Capability.EXPLAIN, Capability.SIMILAR_ITEMS})
    explain_method = "item-item weights"
    light_scoring = True

    def __init__(self, k_neighbors: int = 100, similarity: str = "cosine", shrink: float = 0.0) -> None:
        self.k_neighbors = k_neighbors
        self.similarity = similarity
        self.shrink = shrink

    def _fit(self, data: SequenceData, valid=None, metric=None) -> None:
        if self.similarity not in ("cosine", "pearson"):
            raise ValueError(f"similarity must be 'cosine' or 'pearson', got {self.similarity!r}")
        X = interaction_matrix(data)  # (U, I+1)
        gram = torch.from_numpy((X.T @ X).toarray())  # co-occurrence counts (I+1, I+1)
        counts = torch.diagonal(gram).clone()
        if self.similarity == "pearson":
            # centred columns: x - mean; <xi - mi, xj - mj> = G_ij - U mi mj
            n = float(data.n_users)
            mean = counts / n
            cov = gram - n * torch.outer(mean, mean)
            var = torch.diagonal(cov).clamp_min(1e-12)
            sim = cov / (torch.sqrt(torch.outer(var, var)) + self.shrink)
        else:
            norm = torch.sqrt(counts).clamp_min(1e-12)
            sim = gram / (torch.outer(norm, norm) + self.shrink)
        sim.fill_diagonal_(0.0)
        sim[0, :] = 0.0
        sim[:, 0] = 0.0
        k = min(self.k_neighbors, sim.shape[1] - 1)
        # keep the k strongest neighbours of each item (row i = neighbours of item i)
        vals, idx = torch.topk(sim, k, dim=1)
        n = sim.shape[0]
        rows = np.repeat(np.arange(n), k)
        self.similarity_ = sp.csr_matrix(
            (vals.reshape(-1).numpy(), (rows, idx.reshape(-1).numpy())), shape=(n, n)
        )
        self.similarity_.eliminate_zeros()

    def _score(self, histories, users=None) -> torch.Tensor:
        X = histories_matrix(histories, self.n_items_ + 1)
        # score_j = sum_{i in h} sim(i, j)
        return torch.from_numpy((X @ self.similarity_).toarray().astype(np.float32, copy=False))

    def explain_items(self, histories, items, users=None) -> list[list[Explanation]]:
        # the score of j sums sim(h, j) over the distinct history items h: those are the shares
        self._check_fitted()
        out = []
        for h, rec in zip(histories, items):
            distinct = np.unique(np.asarray(h, dtype=np.int64))
            C = np.asarray(self.similarity_[distinct][:, np.asarray(rec, dtype=np.int64)].todense(),
                           dtype=np.float32)
            out.append(item_item_explanations(self.explain_method, h, C, distinct))
        return out

    def similar_scores(self, items) -> torch.Tensor:
        self._check_fitted()
        s = torch.from_numpy(self.similarity_[np.asarray(items, dtype=np.int64)].toarray().astype(np.float32))
        s[:, 0] = float("-inf")
        return s

    def _state_tensors(self):
        m = self.similarity_.tocoo()
        return {
            "sim_rows": torch.from_numpy(m.row.astype(np.int64)),
            "sim_cols": torch.from_numpy(m.col.astype(np.int64)),
            "sim_vals": torch.from_numpy(m.data.astype(np.float32)),
        }

    def _load_state_tensors(self, tensors):
        n = self.n_items_ + 1
        self.similarity_ = sp.csr_matrix(
            (tensors["sim_vals"].numpy(), (tensors["sim_rows"].numpy(), tensors["sim_cols"].numpy())),
            shape=(n, n),
        )


@register("ease")
class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder (Steck, 2019).

    Closed form: ``P = (X^T X + lambda I)^-1``, ``B = -P / diag(P)`` with a zero
    diagonal. Solved in float32 with a Cholesky factorisation, which is
    accurate enough at the usual lambdas and about 2x faster than LU in float64.
    A history scores item ``j`` by ``sum_h B[h, j]`` over its distinct items: those
    terms are its explanation, and row ``B[i]`` is item ``i``'s similar items.
    """

    capabilities = frozenset({Capability.EXPLAIN, Capability.SIMILAR_ITEMS})
    explain_method = "item-item weights"
    light_scoring = True

    def __init__(self, l2: float = 500.0, dtype: str = "float32") -> None:
        self.l2 = l2
        self.dtype = dtype

    def _fit(self, data: SequenceData, valid=None, metric=None) -> None:
        if self.l2 <= 0:
            raise ValueError(f"EASE needs l2 > 0, got {self.l2}")
        dt = {"float32": torch.float32, "float64": torch.float64}[self.dtype]
        X = interaction_matrix(data)[:, 1:]  # drop padding column
        G = torch.from_numpy((X.T @ X).toarray()).to(dt)
        G.diagonal().add_(float(self.l2))
        L = torch.linalg.cholesky(G)
        P = torch.cholesky_inverse(L)
        del G, L
        B = P / (-torch.diagonal(P))[None, :]
        B.fill_diagonal_(0.0)
        # row 0 (padding id) stays zero so sparse histories can use dense ids directly
        self.weights_ = torch.zeros(B.shape[0] + 1, B.shape[1])  # (I+1, I): history item -> scored item
        self.weights_[1:] = B

    def _score(self, histories, users=None) -> torch.Tensor:
        s = torch.empty(len(histories), self.n_items_ + 1)
        if len(histories) == 1:
            # one history (serving): sum its distinct items' rows in one kernel, no sparse matrix
            u = torch.from_numpy(np.unique(histories[0]))[None]
            s[:, 1:] = F.embedding_bag(u, self.weights_, mode="sum") if u.shape[1] else 0.0
        else:
            X = histories_matrix(histories, self.n_items_ + 1)
            s[:, 1:] = torch.from_numpy(X @ self.weights_.numpy())
        return s

    def explain_items(self, histories, items, users=None) -> list[list[Explanation]]:
        self._check_fitted()
        out = []
        for h, rec in zip(histories, items):
            distinct = np.unique(np.asarray(h, dtype=np.int64))
            cols = torch.from_numpy(np.asarray(rec, dtype=np.int64) - 1)
            # just the (history item, recommended item) weights, H x k
            C = self.weights_[torch.from_numpy(distinct)[:, None], cols[None, :]].numpy()
            out.append(item_item_explanations(self.explain_method, h, C, distinct))
        return out

    def similar_scores(self, items) -> torch.Tensor:
        self._check_fitted()
        rows = self.weights_[torch.from_numpy(np.asarray(items, dtype=np.int64))]  # (B, I)
        return F.pad(rows, (1, 0), value=float("-inf"))

    def _state_tensors(self):
        return {"weights": self.weights_}

    def _load_state_tensors(self, tensors):
        self.weights_ = tensors["weights"]
