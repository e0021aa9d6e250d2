"""Training windows and right-padded batches for the sequence models (SASRec, BERT4Rec).

* :func:`windows` cuts every sequence, from its end, into non-overlapping windows
  of at most ``max_len`` positions, so every position is trained exactly once
  per epoch (SASRec windows its inputs, whose targets are the next items;
  BERT4Rec windows the items themselves).
* :func:`length_grouped_batches` shuffles the windows and sorts them by length
  inside groups of 64 batches: batches carry little padding and still come in
  random order; :func:`target_budget_batches` does the same with batches of a
  fixed number of targets instead of windows.
* :func:`window_ids` gathers a batch of windows as a right-padded ``(B, T)`` id
  matrix (left-padded for right-aligned positions); :func:`pad_right` /
  :func:`pad_left` do the same for inference histories.
* :func:`training_prefixes`: SASRec's ``training="prefixes"`` samples, one per
  target, its input the items before it.

Windows are right-padded: with causal attention a real position never sees a
padding key, and position ``t`` carries the same positional embedding in
training and at inference.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from attnrec.data.dataset import SequenceData


def windows(data: SequenceData, max_len: int, min_len: int = 1, shift: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` into ``data.items`` of the windows of every sequence.

    Each sequence without its last ``shift`` items is cut from the end into
    windows of at most ``max_len`` items; a (first) window shorter than
    ``min_len`` is dropped.
    """
    starts, lens = [], []
    for u in range(data.n_users):
        a, end = int(data.indptr[u]), int(data.indptr[u + 1]) - shift
        while end - a >= max(1, min_len):
            n = min(max_len, end - a)
            starts.append(end - n)
            lens.append(n)
            end -= n
    return np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)


def training_windows(data: SequenceData, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """SASRec's windows: inputs ``items[s:s+n]``, targets ``items[s+1:s+n+1]``.

    Every target of every sequence appears in exactly one window.
    """
    return windows(data, max_len, shift=1)


def cloze_windows(data: SequenceData, max_len: int, min_len: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """BERT4Rec's windows: every item in exactly one window; windows shorter than
    ``min_len`` (no context to predict from) are dropped."""
    return windows(data, max_len, min_len=min_len)


def length_grouped_batches(lens: np.ndarray, batch_size: int, rng: np.random.Generator
                           ) -> Iterator[np.ndarray]:
    """Window indices of one epoch's batches: shuffled, sorted by length inside groups of 64 batches."""
    perm = rng.permutation(len(lens))
    group = batch_size * 64
    order = np.concatenate([
        perm[g : g + group][np.argsort(lens[perm[g : g + group]], kind="stable")]
        for g in range(0, len(perm), group)
    ])
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for j in rng.permutation(len(chunks)):
        yield chunks[j]


def target_budget_batches(lens: np.ndarray, targets: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Window indices of one epoch's batches of about ``targets`` targets each (not a fixed window count).

    Shuffled and sorted by length inside groups of about 64 batches, like
    :func:`length_grouped_batches`; a batch closes once its windows hold ``targets``
    positions (a window longer than that is a batch of its own). Each step's loss
    is the mean over its targets, so with equal-sized batches every target weighs
    the same, whatever the length of its window.
    """
    perm = rng.permutation(len(lens))
    per_group = targets * 64
    ends = np.searchsorted(np.cumsum(lens[perm]), np.arange(per_group, int(lens.sum()) + per_group, per_group),
                           side="right")
    chunks, a = [], 0
    for b in np.unique(np.minimum(ends, len(perm))):
        group = perm[a:b][np.argsort(lens[perm[a:b]], kind="stable")]
        cuts = np.searchsorted(np.cumsum(lens[group]), np.arange(targets, int(lens[group].sum()) + targets, targets),
                               side="left") + 1
        chunks += [c for c in np.split(group, np.unique(np.minimum(cuts, len(group)))[:-1]) if len(c)]
        a = b
    for j in rng.permutation(len(chunks)):
        yield chunks[j]


def training_prefixes(data: SequenceData, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` of SASRec's prefix samples: input ``items[s:s+n]``, target ``items[s+n]``.

    One sample per target (every item but each sequence's first); its input is
    the at most ``max_len`` items before it.
    """
    seq_start = np.repeat(data.indptr[:-1], np.diff(data.indptr))  # sequence start of every item
    ends = np.arange(len(data.items), dtype=np.int64)
    keep = ends > seq_start
    ends = ends[keep]
    lens = np.minimum(ends - seq_start[keep], max_len).astype(np.int64)
    return ends - lens, lens


def window_ids(items: np.ndarray, starts: np.ndarray, lens: np.ndarray, left: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(ids (B, T), real (B, T))``: ``items[s : s + n]`` per window, padded with 0 (on the left if ``left``)."""
    T = int(lens.max())
    off = np.arange(T)[None, :] - (T - lens[:, None] if left else 0)  # (B, T) offset into each window
    real = (off >= 0) & (off < lens[:, None])
    pos = np.where(real, starts[:, None] + off, 0)
    return np.where(real, items[pos], 0), real


def pad_left(histories: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``max_len`` items of each history, left-padded (newest item in the last column)."""
    lens = np.array([min(len(h), max_len) for h in histories], dtype=np.int64)
    T = max(1, int(lens.max()) if len(lens) else 0)
    seq = np.zeros((len(histories), T), dtype=np.int64)
    for i, h in enumerate(histories):
        if lens[i]:
            seq[i, T - lens[i]:] = np.asarray(h[-lens[i]:], dtype=np.int64)
    return torch.from_numpy(seq), torch.from_numpy(lens)


def pad_right(histories: Sequence[np.ndarray], max_len: int, extra: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``max_len`` items of each history, right-padded -> ``(seq (B, T), lengths (B,))``.

    ``extra`` padding columns are added after the longest history (BERT4Rec
    writes its ``[MASK]`` there).
    """
    lens = np.array([min(len(h), max_len) for h in histories], dtype=np.int64)
    T = max(1, (int(lens.max()) if len(lens) else 0) + extra)
    seq = np.zeros((len(histories), T), dtype=np.int64)
    for i, h in enumerate(histories):
        if lens[i]:
            seq[i, : lens[i]] = np.asarray(h[-lens[i]:], dtype=np.int64)
    return torch.from_numpy(seq), torch.from_numpy(lens)
