"""Full-ranking evaluation: every case is ranked against the whole catalogue.

Metrics (per case, then averaged over cases):

* ``HR@K``     1 if any target is in the top K.
* ``Recall@K`` hits in the top K / number of targets.
* ``NDCG@K``   DCG of the hits / ideal DCG with ``min(#targets, K)`` hits.
* ``MRR@K``    1 / rank of the first hit if it is within K, else 0.
* ``Coverage@K`` distinct items recommended in any top K / catalogue size.
* ``AvgPop@K`` mean training popularity (interaction count) of recommended items.

Items of the case's input history are excluded from the ranking by default
(``exclude_history=False`` for domains with repeat consumption). Exclusions and
the tie rule (equal scores: lower item id first) are :mod:`attnrec.ranking`'s, the
same ``Recommender.recommend`` uses, so an independently scored ``recommend``
list reproduces these numbers.

Sampled metrics (rank the target against ``n`` random negatives) exist only
behind ``sampled_negatives=n`` and every key they produce says ``sampled``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from attnrec.data.dataset import EvalSet
from attnrec.models.base import Recommender
from attnrec.ranking import exclusion_mask, ranks_of_targets, top_k  # noqa: F401 (ranks_of_targets: public here too)
from attnrec.training import ValidationMetric

log = logging.getLogger(__name__)

DEFAULT_KS = (5, 10, 20)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    n_cases: int
    protocol: str
    #: per-case metric arrays (``evaluate(..., per_case=True)``)
    per_case: dict[str, np.ndarray] | None = None

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]


def metrics_from_ranks(ranks: list[np.ndarray], ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-case metric arrays from target ranks."""
    n = len(ranks)
    res: dict[str, np.ndarray] = {}
    for K in ks:
        hr = np.zeros(n)
        rec = np.zeros(n)
        ndcg = np.zeros(n)
        mrr = np.zeros(n)
        for i, r in enumerate(ranks):
            if len(r) == 0:
                continue
            hits = np.sort(r[r <= K])
            if len(hits):
                hr[i] = 1.0
                rec[i] = len(hits) / len(r)
                dcg = (1.0 / np.log2(hits + 1)).sum()
                idcg = (1.0 / np.log2(np.arange(2, min(len(r), K) + 2))).sum()
                ndcg[i] = dcg / idcg
                mrr[i] = 1.0 / hits[0]
        res[f"HR@{K}"] = hr
        res[f"Recall@{K}"] = rec
        res[f"NDCG@{K}"] = ndcg
        res[f"MRR@{K}"] = mrr
    return res


def evaluate(
    model: Recommender,
    evalset: EvalSet,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    batch_size: int = 512,
    sampled_negatives: int | None = None,
    seed: int = 0,
    per_case: bool = False,
    progress: bool = False,
    beyond_accuracy: bool = True,
) -> EvalResult:
    """Evaluate ``model`` on ``evalset`` with full ranking (or sampled, if asked).

    Memory is bounded by ``batch_size x n_items`` scores at a time; results do
    not depend on ``batch_size``. ``beyond_accuracy=False`` skips Coverage@K and
    AvgPop@K (their top-K lists cost a pass over every score; early stopping needs
    only the ranks).
    """
    model._check_fitted()
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks}")
    n = len(evalset)
    if n == 0:
        raise ValueError(f"evaluation set {evalset.name!r} has no cases")
    kmax = max(ks)
    popularity = model.item_counts_
    all_ranks: list[np.ndarray] = []
    recommended = {K: np.zeros(model.n_items_ + 1, dtype=bool) for K in ks}
    pop_sum = {K: 0.0 for K in ks}
    pop_cnt = {K: 0 for K in ks}
    rng = np.random.default_rng(seed)
    # cases in order of history length (full ranking; sampled ranking keeps the case order its
    # seeded negatives follow): a batch is padded to its longest history, so on short-sequence
    # data a batch in user order costs a sequence model several times the real positions
    order = (np.arange(n) if sampled_negatives
             else np.argsort(np.diff(evalset.hist_indptr), kind="stable"))
    iterator = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"evaluate {evalset.name}", unit="batch")
    for start in iterator:
        cases = order[start : start + batch_size]
        hist = [evalset.history(i) for i in cases]
        targ = [evalset.targets(i) for i in cases]
        with torch.no_grad():
            scores = model.score(hist, evalset.users[cases]).float()
        mask = exclusion_mask(hist, scores.shape[1], exclude_history)
        scores = scores.masked_fill(mask, float("-inf"))
        if sampled_negatives:
            all_ranks.extend(_sampled_ranks(scores, hist, targ, sampled_negatives, rng))
            continue
        all_ranks.extend(ranks_of_targets(scores, targ))
        if not beyond_accuracy:
            continue
        # beyond-accuracy: what the top-K lists actually contain
        idx, vals = top_k(scores, kmax)
        idx = idx.numpy()
        finite = np.isfinite(vals.numpy())
        for K in ks:
            sel = idx[:, :K][finite[:, :K]]
            recommended[K][sel] = True
            pop_sum[K] += float(popularity[sel].sum())
            pop_cnt[K] += int(sel.size)
    if not sampled_negatives:  # back to the case order
        by_case: list[np.ndarray] = [np.zeros(0)] * n
        for i, r in zip(order.tolist(), all_ranks):
            by_case[i] = r
        all_ranks = by_case
    per = metrics_from_ranks(all_ranks, ks)
    label = f" (sampled, {sampled_negatives} negatives)" if sampled_negatives else ""
    metrics = {f"{k}{label}": float(v.mean()) for k, v in per.items()}
    if not sampled_negatives and beyond_accuracy:
        for K in ks:
            metrics[f"Coverage@{K}"] = float(recommended[K][1:].sum() / model.n_items_)
            metrics[f"AvgPop@{K}"] = pop_sum[K] / max(1, pop_cnt[K])
    protocol = (
        f"{evalset.meta.get('protocol', 'split')}; "
        + (f"SAMPLED ranking against {sampled_negatives} random negatives" if sampled_negatives else "full ranking over all items")
        + ("; history items excluded" if exclude_history else "; history items kept")
    )
    result = EvalResult(metrics, n, protocol)
    if per_case:
        result.per_case = per
    return result


def validation_metric(k: int = 10) -> ValidationMetric:
    """NDCG@k by full ranking (history items excluded): the metric models stop early on and select by."""
    name = f"NDCG@{k}"
    return ValidationMetric(
        name,
        evaluate=lambda model, evalset: evaluate(model, evalset, ks=(k,), beyond_accuracy=False)[name],
        of_ranks=lambda ranks: float(metrics_from_ranks(list(ranks), (k,))[name].mean()),
    )


def _sampled_ranks(
    scores: torch.Tensor,
    hist: list[np.ndarray],
    targ: list[np.ndarray],
    n_neg: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    N = scores.shape[1]
    out = []
    for b in range(scores.shape[0]):
        forbidden = set(hist[b].tolist()) | set(targ[b].tolist()) | {0}
        cand = rng.integers(1, N, size=n_neg * 2 + len(forbidden))
        neg = np.array([c for c in cand if c not in forbidden][:n_neg], dtype=np.int64)
        row = scores[b].numpy()
        ranks = []
        for t in targ[b]:
            st = row[t]
            if not np.isfinite(st):
                ranks.append(np.inf)
                continue
            ranks.append(1 + float((row[neg] > st).sum()))
        out.append(np.array(ranks))
    return out
