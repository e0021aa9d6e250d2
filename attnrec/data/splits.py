"""Train/validation/test protocols over :class:`SequenceData`.

Both functions are pure (the input is never modified) and seedable, and return a
:class:`Split` whose ``train_full`` never contains a test interaction.

* :func:`leave_one_out`: the last item of each user is the test target, the one
  before it the validation target (the SASRec/BERT4Rec protocol).
* :func:`temporal_split`: one global time cut-off, so no model ever trains on
  events that happen after the ones it is evaluated on.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np

from attnrec.data.dataset import EvalSet, SequenceData, Split

log = logging.getLogger(__name__)


def _subset(data: SequenceData, keep: np.ndarray) -> SequenceData:
    """``data`` restricted to the events where ``keep`` is true (same users, same maps)."""
    user_of = np.repeat(np.arange(data.n_users), data.lengths)
    indptr = np.zeros_like(data.indptr)
    np.cumsum(np.bincount(user_of[keep], minlength=data.n_users), out=indptr[1:])
    ts = None if data.timestamps is None else data.timestamps[keep].copy()
    return SequenceData(indptr, data.items[keep].copy(), data.n_items, data.user_map,
                        data.item_map, ts)


def _prefix(data: SequenceData, new_lengths: np.ndarray) -> SequenceData:
    """Each user's first ``new_lengths[u]`` events."""
    pos = np.arange(data.n_interactions) - np.repeat(data.indptr[:-1], data.lengths)
    return _subset(data, pos < np.repeat(new_lengths, data.lengths))


def _evalset(users: np.ndarray, hist: SequenceData, targets: list[np.ndarray],
             name: str, meta: dict) -> EvalSet:
    histories = [hist.sequence(u) for u in users]
    es = EvalSet.from_lists(users, histories, targets, name=name)
    es.meta = meta
    return es


def _sample_users(eligible: np.ndarray, n_eval_users: int | None, seed: int) -> np.ndarray:
    """Sorted evaluation users: all eligible ones, or a reproducible sample of them."""
    if n_eval_users is None or n_eval_users >= len(eligible):
        return np.sort(eligible)
    if n_eval_users < 0:
        raise ValueError(f"n_eval_users must be >= 0, got {n_eval_users}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n_eval_users, replace=False))


def leave_one_out(data: SequenceData, n_eval_users: int | None = None, seed: int = 0) -> Split:
    """Leave-one-out split by sequence position.

    Users with >= 3 items: train = seq[:-2]; valid target seq[-2] given seq[:-2];
    train_full = seq[:-1]; test target seq[-1] given seq[:-1].
    Users with 2 items: train = train_full = seq[:1], a test case, no valid case.
    Users with 1 item: in train and train_full, never evaluated.
    ``n_eval_users`` samples (with ``seed``) the evaluation users, the same for valid
    and test; everyone still trains.
    """
    L = data.lengths
    train = _prefix(data, np.maximum(L - 2, np.minimum(L, 1)))
    train_full = _prefix(data, np.maximum(L - 1, np.minimum(L, 1)))

    eligible = np.nonzero(L >= 2)[0]
    chosen = _sample_users(eligible, n_eval_users, seed)
    valid_users = chosen[L[chosen] >= 3]
    ends = data.indptr[1:]
    base = {
        "protocol": "leave-one-out",
        "n_users": int(data.n_users),
        "n_users_1_item": int((L == 1).sum()),
        "n_users_2_items": int((L == 2).sum()),
        "n_eval_users": n_eval_users,
        "seed": seed,
    }
    valid = _evalset(valid_users, train, [[int(x)] for x in data.items[ends[valid_users] - 2]],
                     "valid", {**base, "n_cases": len(valid_users)})
    test = _evalset(chosen, train_full, [[int(x)] for x in data.items[ends[chosen] - 1]],
                    "test", {**base, "n_cases": len(chosen)})
    protocol = (f"leave-one-out: last item = test ({len(test)} users), "
                f"second to last = validation ({len(valid)} users)")
    if n_eval_users is not None:
        protocol += f", evaluation users sampled (n={n_eval_users}, seed={seed})"
    log.info("%s", protocol)
    return Split(train, valid, train_full, test, protocol=protocol)


def _fmt_time(t: float) -> str:
    # epoch seconds read better as dates; small values are positions or toy data
    if t > 1e8:
        return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{t:g}"


def _window_cases(data: SequenceData, hist_mask: np.ndarray, target_mask: np.ndarray,
                  drop_seen_targets: bool) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Users with history and targets; targets = unique window items, first-seen order.

    Also returns, per case, how many window items were already in the history.
    """
    users, targets, n_seen = [], [], []
    for u in range(data.n_users):
        lo, hi = data.indptr[u], data.indptr[u + 1]
        hist = data.items[lo:hi][hist_mask[lo:hi]]
        if not len(hist):
            continue
        window = data.items[lo:hi][target_mask[lo:hi]]
        uniq, first = np.unique(window, return_index=True)
        t = uniq[np.argsort(first)]
        in_hist = np.isin(t, hist)
        if drop_seen_targets:
            t = t[~in_hist]
        if len(t):
            users.append(u)
            targets.append(t)
            n_seen.append(int(in_hist.sum()))
    return np.asarray(users, dtype=np.int64), targets, np.asarray(n_seen, dtype=np.int64)


def temporal_split(
    data: SequenceData,
    test_start: float | None = None,
    valid_start: float | None = None,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    n_eval_users: int | None = None,
    seed: int = 0,
    drop_seen_targets: bool = False,
) -> Split:
    """Split at global time cut-offs ``valid_start <= test_start``.

    train = events before ``valid_start``; valid cases: history = a user's events
    before ``valid_start``, targets = unique items in ``[valid_start, test_start)``;
    train_full = events before ``test_start``; test cases: history = events before
    ``test_start``, targets = unique items at or after ``test_start``.  Users
    without history before a cut-off (cold start) are not evaluated.

    Cut-offs default to the time quantiles that leave ``test_fraction`` and
    ``valid_fraction`` of all events after them.  ``drop_seen_targets`` removes
    targets the user already had in the history (which full-ranking evaluation
    masks by default); their count is in ``meta["n_targets_in_history"]`` either way.
    """
    if data.timestamps is None:
        raise ValueError(
            "temporal_split needs timestamps, but this data has none "
            "(e.g. it was read from a sequence-per-line file); use leave_one_out instead"
        )
    ts = data.timestamps
    if data.n_interactions == 0:
        raise ValueError("temporal_split got no interactions")
    if test_start is None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        test_start = float(np.quantile(ts, 1.0 - test_fraction))
    if valid_start is None:
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
        # fraction of all events, counted back from the test cut-off
        frac_before_test = float(np.mean(ts < test_start))
        valid_start = float(np.quantile(ts, max(0.0, frac_before_test - valid_fraction)))
        valid_start = min(valid_start, test_start)
    if valid_start > test_start:
        raise ValueError(f"valid_start ({valid_start}) is after test_start ({test_start})")

    before_valid = ts < valid_start
    before_test = ts < test_start
    train = _subset(data, before_valid)
    train_full = _subset(data, before_test)

    v_users, v_targets, v_seen = _window_cases(data, before_valid, before_test & ~before_valid,
                                               drop_seen_targets)
    t_users, t_targets, t_seen = _window_cases(data, before_test, ~before_test,
                                               drop_seen_targets)
    chosen = _sample_users(np.union1d(v_users, t_users), n_eval_users, seed)
    v_keep = np.isin(v_users, chosen)
    t_keep = np.isin(t_users, chosen)
    base = {
        "protocol": "temporal",
        "valid_start": valid_start,
        "test_start": test_start,
        "n_users": int(data.n_users),
        "n_eval_users": n_eval_users,
        "seed": seed,
        "drop_seen_targets": drop_seen_targets,
    }
    valid = _evalset(v_users[v_keep], train, [t for t, k in zip(v_targets, v_keep) if k],
                     "valid", {**base, "n_cases": int(v_keep.sum()),
                               "n_targets_in_history": int(v_seen[v_keep].sum()),
                               "n_train_events": train.n_interactions})
    test = _evalset(t_users[t_keep], train_full, [t for t, k in zip(t_targets, t_keep) if k],
                    "test", {**base, "n_cases": int(t_keep.sum()),
                             "n_targets_in_history": int(t_seen[t_keep].sum()),
                             "n_train_events": train_full.n_interactions})
    protocol = (f"temporal split: validation from {_fmt_time(valid_start)} "
                f"({len(valid)} users), test from {_fmt_time(test_start)} ({len(test)} users); "
                f"targets = unique items after the cut-off")
    if n_eval_users is not None:
        protocol += f", evaluation users sampled (n={n_eval_users}, seed={seed})"
    log.info("%s", protocol)
    return Split(train, valid, train_full, test, protocol=protocol)
