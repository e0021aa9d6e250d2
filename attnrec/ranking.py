"""Ranking: which items may be recommended, and in which order. One rule, one place.

* **Exclusions** (:func:`exclusion_mask`, :func:`admissible`): column 0
  (padding) is never recommended; a history's own items, explicit exclusions
  and a boolean ``allowed`` mask (e.g. a category filter) remove more.
* **Order**: by score, highest first; **equal scores go to the lower item id**.
  :func:`top_k` is the only implementation of that tie rule. Lists that are
  not a full catalogue row (FAISS candidates) are ordered with
  :func:`top_k_of`, which lays them out by id and then calls :func:`top_k`;
  :func:`ranks_of_targets` (evaluation) counts the items that :func:`top_k`
  would put before a target, so a ``recommend`` list and an evaluation rank
  always agree.

Every consumer ranks through this module: ``Recommender.recommend``, the
evaluation, the service and FAISS retrieval.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

NEG_INF = float("-inf")


# ---- exclusions -------------------------------------------------------------------------------
def exclusion_mask(
    histories: Sequence[np.ndarray],
    n_columns: int,
    exclude_history: bool = True,
    exclude: Sequence[Sequence[int] | None] | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``(B, n_columns)`` mask of items that must not be recommended.

    Column 0 (padding) is always excluded; ``exclude_history`` adds each row's
    history, ``exclude[b]`` more ids for row ``b`` (out-of-range ids are
    ignored) and ``allowed`` (``(n_columns,)``, shared by all rows) removes
    everything it does not allow.
    """
    B = len(histories)
    mask = torch.zeros(B, n_columns, dtype=torch.bool)
    mask[:, 0] = True
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for b in range(B):
        for ids in (histories[b] if exclude_history else None, None if exclude is None else exclude[b]):
            if ids is not None and len(ids):
                rows.append(np.full(len(ids), b))
                cols.append(np.asarray(ids, dtype=np.int64))
    if rows:
        r = torch.from_numpy(np.concatenate(rows))
        c = torch.from_numpy(np.concatenate(cols))
        keep = (c >= 0) & (c < n_columns)
        mask[r[keep], c[keep]] = True
    if allowed is not None:
        mask |= ~allowed[None, :]
    return mask


def admissible(ids: np.ndarray, banned: np.ndarray | None = None, allowed: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over candidate ``ids`` (1-D): real (> 0), not ``banned``, ``allowed``."""
    keep = ids > 0
    if allowed is not None:
        keep &= allowed[ids]
    if banned is not None and len(banned):
        keep &= ~np.isin(ids, banned)
    return keep


# ---- order ------------------------------------------------------------------------------------
def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of ``(B, N)`` scores; equal scores go to the lower column (item id).

    Masked entries must be ``-inf``; they are returned only if fewer than k
    finite scores exist, with id ``0`` (callers drop or pad them).
    """
    k = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, k, dim=1)
    # topk is not stable: if ties straddle the boundary or sit inside the list,
    # redo those rows with a stable sort so results never depend on the kernel.
    kth = vals[:, -1:]
    n_ge = (scores >= kth).sum(dim=1, dtype=torch.int32)
    tied = (n_ge > k) | (vals[:, :-1] == vals[:, 1:]).any(dim=1) if k > 1 else (n_ge > k)
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        s_vals, s_idx = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows] = s_vals[:, :k]
        idx[rows] = s_idx[:, :k]
    idx = torch.where(torch.isfinite(vals), idx, torch.zeros_like(idx))
    return idx, vals


def top_k_of(ids: np.ndarray, scores: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Order candidate lists ``(B, M)`` (ids, 0 = none, and their scores) by :func:`top_k`'s rule.

    Candidates are laid out by ascending id first, so :func:`top_k`'s "lower
    column first" is "lower id first". Missing candidates (id 0) go last.
    """
    k = ids.shape[1] if k is None else min(k, ids.shape[1])
    by_id = np.argsort(np.where(ids > 0, ids, np.iinfo(np.int64).max), axis=1, kind="stable")
    ids = np.take_along_axis(ids, by_id, 1)
    s = np.where(ids > 0, np.take_along_axis(scores, by_id, 1), -np.inf).astype(np.float32)
    col, vals = top_k(torch.from_numpy(s), k)
    out_ids = np.take_along_axis(ids, col.numpy(), 1)
    out_sc = vals.numpy()
    out_ids[~np.isfinite(out_sc)] = 0  # fewer than k real candidates
    return out_ids, out_sc


def rank_row(scores: torch.Tensor, k: int, seen: np.ndarray | None = None,
             exclude: np.ndarray | None = None, allowed: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` dense ids and scores of one ``(N,)`` score row after exclusions, inadmissible dropped."""
    mask = exclusion_mask([seen if seen is not None else np.zeros(0, np.int64)], scores.shape[0],
                          True, [exclude], allowed)
    idx, vals = top_k(scores[None].masked_fill(mask, NEG_INF), k)
    ids, sc = idx[0].numpy(), vals[0].numpy()
    keep = (ids > 0) & np.isfinite(sc)
    return ids[keep], sc[keep]


def ranks_of_targets(
    scores: torch.Tensor, targets: Sequence[np.ndarray], max_elements: int = 50_000_000
) -> list[np.ndarray]:
    """1-based rank of each target in each row of ``scores`` (masked items are ``-inf``).

    The rank :func:`top_k` gives the target: ``#(higher score) + #(equal score,
    lower id) + 1``. A target whose score is ``-inf`` (excluded) gets rank ``inf``.
    """
    B, N = scores.shape
    lengths = np.fromiter((len(t) for t in targets), dtype=np.int64, count=B)
    T = int(lengths.max()) if B else 0
    if T == 0:
        return [np.zeros(0) for _ in range(B)]
    padded = np.zeros((B, T), dtype=np.int64)
    for b, t in enumerate(targets):
        padded[b, : len(t)] = t
    tgt = torch.from_numpy(padded)  # (B, T)
    ts = scores.gather(1, tgt)  # (B, T)
    ids = torch.arange(N)
    ranks = torch.empty(B, T, dtype=torch.float64)
    rows_per_chunk = max(1, max_elements // (N * T))  # bounds the (b, T, N) comparison
    for r0 in range(0, B, rows_per_chunk):
        sl = slice(r0, r0 + rows_per_chunk)
        row = scores[sl, None, :]  # (b, 1, N)
        t_s = ts[sl, :, None]  # (b, T, 1)
        # (bool sums in int32: several times faster than torch's default int64 accumulation)
        better = (row > t_s).sum(-1, dtype=torch.int32)  # (b, T)
        # exact ties with another item are rare: count the lower-id ones only where there are any
        tied = ((row == t_s).sum(-1, dtype=torch.int32) > 1) & torch.isfinite(ts[sl])
        if bool(tied.any()):
            bi, ti = tied.nonzero(as_tuple=True)
            rows_t, tgt_t = scores[sl][bi], tgt[sl][bi, ti, None]  # (m, N), (m, 1)
            better[bi, ti] += ((rows_t == ts[sl][bi, ti, None]) & (ids[None, :] < tgt_t)).sum(-1, dtype=torch.int32)
        ranks[sl] = (better + 1).double()
    ranks[~torch.isfinite(ts)] = float("inf")
    r = ranks.numpy()
    return [r[b, : lengths[b]] for b in range(B)]
