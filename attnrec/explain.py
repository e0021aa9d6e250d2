"""Explanations: which history items a recommendation rests on, and whether that is true.

:func:`explain` returns, for a history and a recommended item, a weight per
history item. What the weights are (``method``):

* ``None`` (default): the model's own explanation, declared with the
  ``EXPLAIN`` capability (:meth:`Recommender.explain_items`) and specific to
  each recommended item: exact score terms for EASE / item-kNN / text
  similarity, DIN's target attention for ``two-stage``, and for SASRec /
  BERT4Rec attention rollout times each history item's match with the
  recommended item (:mod:`attnrec.models.attribution`).
* ``"rollout"``: attention rollout (Abnar & Zuidema, ACL 2020) over all layers
  onto the row that scores every item (:meth:`AttentionMaps.rollout`); the
  same for every recommended item. ``"last"``: the last layer's row alone,
  averaged over heads. Both need the ``ATTENTION`` capability.
* ``"occlusion"``: any model; how much the item's score drops when each
  history position is removed (positive drops, normalised). One extra score
  per history position: exact but the dearest.

:func:`faithfulness` checks an explanation against the model: removing the
history item it weights most should lower the recommended item's score more
than removing a random other one. It is run per recommended item (the top
``k`` of each history, each with its own explanation). Measured rates are in
``benchmarks/RESULTS.md`` ("Explanations (faithfulness)").
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from attnrec.models.base import Capability, Explanation, Recommender

log = logging.getLogger(__name__)

METHODS = (None, "rollout", "last", "occlusion")


def explanations(model: Recommender, histories: Sequence[np.ndarray], items: Sequence[Sequence[int]],
                 method: str | None = None, users: np.ndarray | None = None) -> list[list[Explanation]]:
    """Per history ``b``, one :class:`Explanation` for each item of ``items[b]`` (see ``method`` above)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    histories = [np.asarray(h, dtype=np.int64) for h in histories]
    if method is None:
        if not model.supports(Capability.EXPLAIN):
            raise model._refuse(Capability.EXPLAIN, "use method='occlusion'")
        return model.explain_items(histories, items, users)
    if method == "occlusion":
        return [_occlusion(model, h, rec, None if users is None else users[b : b + 1])
                for b, (h, rec) in enumerate(zip(histories, items))]
    maps = model.attention_maps(histories)  # refused unless the model declares ATTENTION
    out = []
    for b, (h, rec) in enumerate(zip(histories, items)):
        off = maps.offset(b, len(h))
        w = maps.query_weights(b, method)
        e = Explanation.over(method, h, np.arange(off, off + len(w)), w)
        out.append([e for _ in rec])
    return out


def _occlusion(model: Recommender, history: np.ndarray, items: Sequence[int], users) -> list[Explanation]:
    items = np.asarray(items, dtype=np.int64)
    n = len(history)
    if n == 0:
        return [Explanation.empty("occlusion") for _ in items]
    variants = [history] + [np.delete(history, i) for i in range(n)]
    u = None if users is None else np.repeat(users, n + 1)
    s = model.score(variants, u)[:, torch.from_numpy(items)].double().numpy()  # (n + 1, k)
    drop = np.clip(s[:1] - s[1:], 0.0, None)  # (n, k)
    total = drop.sum(axis=0)
    W = drop / np.where(total > 0, total, 1.0)
    return [Explanation.over("occlusion", history, np.arange(n), W[:, j]) for j in range(len(items))]


def explain(model: Recommender, history: np.ndarray, item: int, method: str | None = None
            ) -> list[tuple[int, int, float]]:
    """``[(history_position, item_id, weight), ...]`` in history order for one recommended ``item``.

    ``history_position`` indexes ``history`` (0 = oldest); positions the
    explanation does not cover (older than an attention model's ``max_len``
    window) get no entry.
    """
    e = explanations(model, [history], [[int(item)]], method)[0][0]
    order = np.argsort(e.positions, kind="stable")
    return [(int(e.positions[j]), int(e.items[j]), float(e.weights[j])) for j in order]


def faithfulness(
    model: Recommender,
    histories: Sequence[np.ndarray],
    n: int = 500,
    method: str | None = None,
    seed: int = 0,
    k: int = 1,
) -> dict:
    """Does removing the most-weighted history item hurt the recommended item more than a random one?

    For up to ``n`` histories with at least 2 items and each of their top ``k``
    recommended items (history excluded): drop (a) the history position its
    explanation weights most and (b) a uniformly random *other* position the
    explanation covers, and compare the drops of that item's score. Returns
    ``{"rate": fraction of cases where (a) lowers the score more, "n": cases
    (histories x k), "mean_drop_top", "mean_drop_random", "method", "k"}`` (a
    rate well above 0.5 means the explanation points at what matters).
    """
    rng = np.random.default_rng(seed)
    cand = [np.asarray(h, dtype=np.int64) for h in histories if len(h) >= 2]
    if len(cand) > n:
        cand = [cand[i] for i in sorted(rng.choice(len(cand), n, replace=False))]
    out = {"rate": float("nan"), "n": 0, "mean_drop_top": float("nan"),
           "mean_drop_random": float("nan"), "method": method or model.explain_method, "k": k}
    if not cand:
        return out
    wins, drops_top, drops_rand = 0, [], []
    batch = max(1, 256 // k)
    for s in range(0, len(cand), batch):
        hs = cand[s : s + batch]
        recs, _ = model.recommend(hs, k=k)
        recs = [r[r > 0] for r in recs]
        exps = explanations(model, hs, recs, method)
        base_h, top_h, rand_h, items = [], [], [], []
        for h, rec, row in zip(hs, recs, exps):
            for item, e in zip(rec, row):
                if len(e.positions) < 2:
                    continue
                j_top = int(np.argmax(e.weights))
                others = [j for j in range(len(e.positions)) if j != j_top]
                j_rand = int(rng.choice(others))
                base_h.append(h)
                top_h.append(np.delete(h, e.positions[j_top]))
                rand_h.append(np.delete(h, e.positions[j_rand]))
                items.append(int(item))
        if not items:
            continue
        with torch.no_grad():
            base, st, sr = (model.score(x) for x in (base_h, top_h, rand_h))
        idx, t = torch.arange(len(items)), torch.tensor(items)
        d_top = (base[idx, t] - st[idx, t]).double().numpy()
        d_rand = (base[idx, t] - sr[idx, t]).double().numpy()
        wins += int((d_top > d_rand).sum())
        drops_top.extend(d_top.tolist())
        drops_rand.extend(d_rand.tolist())
    if drops_top:
        out.update(rate=wins / len(drops_top), n=len(drops_top), mean_drop_top=float(np.mean(drops_top)),
                   mean_drop_random=float(np.mean(drops_rand)))
    return out
