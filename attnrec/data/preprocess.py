"""From a raw InteractionLog to dense, chronological SequenceData.

Steps, in order: event filter, rating threshold, dedupe, iterated k-core, then a
stable sort per user by time with file order breaking ties.  Everything is numpy
array work (no per-row Python), so Beauty-sized logs take a fraction of a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnrec.data.dataset import IdMap, SequenceData
from attnrec.data.columns import ColumnMap
from attnrec.data.readers import read_log
from attnrec.data.log import InteractionLog, LoadReport

logger = logging.getLogger(__name__)


@dataclass
class PreprocessConfig:
    """How to clean a log.

    ``dedupe``: ``"none"`` keeps repeats, ``"first"``/``"last"`` keep one (user, item)
    interaction, the earliest or latest in chronological order.  ``rating_threshold``
    keeps ratings ``>=`` it.  ``min_*_interactions`` is applied as an iterated k-core
    (repeated until no row is removed).  ``event_types`` keeps only these events.
    """

    dedupe: str = "none"
    rating_threshold: float | None = None
    min_user_interactions: int = 0
    min_item_interactions: int = 0
    event_types: list[str] | None = None

    def __post_init__(self) -> None:
        if self.dedupe not in ("none", "first", "last"):
            raise ValueError(f"dedupe must be 'none', 'first' or 'last', not {self.dedupe!r}")


@dataclass
class PreprocessReport:
    """Rows removed at each step, in the order the steps ran."""

    rows_in: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    kcore_iterations: int = 0
    users: int = 0
    items: int = 0
    interactions: int = 0
    load: LoadReport | None = None

    def summary(self) -> str:
        lines = []
        if self.load is not None:
            lines.append(self.load.summary())
        lines.append(f"{self.rows_in} interactions in")
        for step, n in self.removed.items():
            extra = f" in {self.kcore_iterations} passes" if step == "k_core" else ""
            lines.append(f"  {n} removed by {step}{extra}")
        lines.append(f"{self.interactions} interactions, {self.users} users, {self.items} items")
        return "\n".join(lines)


def _dense_order(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (sorted unique raw ids, code of each row into them).

    Numeric order when every id is an integer (so Beauty's item "7" stays 7),
    otherwise lexicographic.
    """
    uniq, codes = np.unique(np.asarray(raw, dtype=str), return_inverse=True)
    if len(uniq) and np.char.isdigit(uniq).all() and (np.char.str_len(uniq) < 19).all():
        try:
            as_int = uniq.astype(np.int64)
        except ValueError:  # unicode digits such as "²" pass isdigit but are not integers
            return uniq, codes.reshape(-1)
        # ties such as "7" and "07" keep their lexicographic order
        order = np.lexsort((np.arange(len(uniq)), as_int))
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        uniq, codes = uniq[order], rank[codes]
    return uniq, codes.reshape(-1)


def build_sequences(
    log: InteractionLog, config: PreprocessConfig | None = None
) -> tuple[SequenceData, PreprocessReport]:
    """Clean ``log`` and build per-user chronological sequences with dense ids.

    Users get ids ``0..n_users-1`` and items ``1..n_items`` in sorted raw-id order.
    """
    config = config or PreprocessConfig()
    n = len(log)
    report = PreprocessReport(rows_in=n, load=log.report)
    user_raw, user = _dense_order(log.user)
    item_raw, item = _dense_order(log.item)
    ts = np.asarray(log.timestamp, dtype=np.float64)
    order_in_file = np.arange(n)
    keep = np.ones(n, dtype=bool)

    def step(name: str, mask: np.ndarray) -> None:
        removed = int((keep & ~mask).sum())
        keep[:] &= mask
        report.removed[name] = removed

    if config.event_types is not None:
        if log.event is None:
            raise ValueError("event_types is set but the log has no event column")
        step("event_types", np.isin(np.asarray(log.event, dtype=str), list(config.event_types)))
    if config.rating_threshold is not None:
        if log.rating is None:
            raise ValueError("rating_threshold is set but the log has no rating column")
        rating = np.asarray(log.rating, dtype=np.float64)
        step("rating_threshold", rating >= config.rating_threshold)
    if config.dedupe != "none":
        idx = np.nonzero(keep)[0]
        # group (user, item) pairs, chronological within a group, file order breaking ties
        o = idx[np.lexsort((order_in_file[idx], ts[idx], item[idx], user[idx]))]
        same_as_prev = (user[o][1:] == user[o][:-1]) & (item[o][1:] == item[o][:-1])
        if config.dedupe == "first":
            dup = np.concatenate([[False], same_as_prev])
        else:
            dup = np.concatenate([same_as_prev, [False]])
        mask = np.ones(n, dtype=bool)
        mask[o[dup]] = False
        step("dedupe", mask)
    if config.min_user_interactions > 0 or config.min_item_interactions > 0:
        removed_before = int((~keep).sum())
        while True:
            report.kcore_iterations += 1
            u_cnt = np.bincount(user[keep], minlength=len(user_raw))
            i_cnt = np.bincount(item[keep], minlength=len(item_raw))
            mask = (
                keep
                & (u_cnt[user] >= config.min_user_interactions)
                & (i_cnt[item] >= config.min_item_interactions)
            )
            if (mask == keep).all():
                break
            keep &= mask
        report.removed["k_core"] = int((~keep).sum()) - removed_before

    idx = np.nonzero(keep)[0]
    # compact codes to the survivors; sorted order is preserved
    used_users = np.unique(user[idx])
    used_items = np.unique(item[idx])
    u = np.searchsorted(used_users, user[idx])
    i = np.searchsorted(used_items, item[idx]) + 1
    t = ts[idx]
    o = np.lexsort((idx, t, u))  # stable chronological order, file order on ties
    u, i, t = u[o], i[o], t[o]
    indptr = np.zeros(len(used_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=len(used_users)), out=indptr[1:])

    data = SequenceData(
        indptr=indptr,
        items=i,
        n_items=len(used_items),
        user_map=IdMap(user_raw[used_users].tolist(), offset=0),
        item_map=IdMap(item_raw[used_items].tolist(), offset=1),
        timestamps=t if log.has_time else None,
    )
    report.users, report.items = data.n_users, data.n_items
    report.interactions = data.n_interactions
    logger.info("built sequences: %s", report.summary().replace("\n", "; "))
    return data, report


def load_dataset(
    path: str | Path,
    columns: ColumnMap | None = None,
    format: str = "auto",
    config: PreprocessConfig | None = None,
    **kw,
) -> tuple[SequenceData, PreprocessReport]:
    """``read_log`` then ``build_sequences``; extra keywords go to ``read_log``."""
    return build_sequences(read_log(path, columns, format=format, **kw), config)


def dataset_stats(data: SequenceData) -> dict:
    """Summary numbers of a dataset (see ``SequenceData.stats``)."""
    return data.stats()


def format_stats(stats: dict) -> str:
    """Readable multi-line rendering of ``dataset_stats``."""
    q = [f"{stats.get(f'seq_len_{k}', float('nan')):g}" for k in ("p25", "p50", "p75", "p95")]
    return "\n".join(
        [
            f"users         {stats['users']:,}",
            f"items         {stats['items']:,}",
            f"interactions  {stats['interactions']:,}",
            f"density       {stats['density']:.4%}",
            f"avg length    {stats.get('seq_len_mean', float('nan')):.2f}",
            "seq length    min {}  p25 {}  p50 {}  p75 {}  p95 {}  max {}".format(
                stats["seq_len_min"], *q, stats["seq_len_max"]
            ),
        ]
    )
