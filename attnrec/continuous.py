"""Continuous learning: the service's stored events flow back into training.

One retraining round (:func:`retrain`):

1. **Training log** (:func:`build_training_log`): the current bundle's fit-time
   histories plus the events stored since that bundle was made, merged per user
   in event-time order (ties: fit history first, then arrival), de-duplicated
   on ``(user, item, time)``, without deleted users, without items deleted from
   the catalogue, and with the declared event types applied: only positive
   types become training positives (negative and exclude-only types are not).
   New users and items enter the id maps.
2. **Holdout** (:func:`holdout_latest`): each active user's (a user with new
   events) most recent event is held out; the candidate is fitted on the rest
   with the current bundle's own hyperparameters, from scratch or, optionally,
   warm-started from the current weights.
3. **Guard**: the current and the candidate model are scored on exactly those
   held-out cases with full ranking (:func:`score_cases`); the candidate is
   written only if its NDCG@10 is not worse than the current one's by more than
   the tolerance.
4. **Atomic write** (:func:`write_bundle_atomically`): the bundle is written
   into a temporary directory beside the target and renamed into place. It
   records ``last_event_id`` (and the event store's identity) so that the
   service, on loading it, appends only later stored events to a user's
   fit-time history: events the bundle already contains never count twice.

The written bundle's histories are the *whole* training log (held-out events
included), so nothing acknowledged is missing from the served sequences; its
weights were fitted without the held-out events (the guard's price).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from attnrec.data.catalogue import Catalogue, CatalogueEntry
from attnrec.data.dataset import IdMap, SequenceData
from attnrec.models.base import Recommender
from attnrec.models.capabilities import Capability
from attnrec.serving.feedback import EventTypes  # the service's rule for what an event type means

log = logging.getLogger(__name__)

#: keys in a bundle's ``config.json`` ``info`` that tie it to the events it contains
LAST_EVENT_ID = "last_event_id"
STORE_ID = "event_store_id"
GUARD_METRIC = "NDCG@10"


def service_secret_and_types(database_url: str | None, data_dir: Path | None) -> tuple[bytes, EventTypes]:
    """The service's tombstone secret and event types, read as ``attnrec serve`` reads them.

    Refuses to guess a secret: with a new one no deleted user would be recognised.
    """
    from attnrec.serving.settings import load_settings

    s = load_settings(model_path=Path("."), database_url=database_url, data_dir=data_dir)
    if s.secret is None and not (s.data_dir / "secret.key").exists():
        raise ValueError(
            f"no server secret: set ATTNREC_SECRET or pass the service's --data-dir ({s.data_dir / 'secret.key'} "
            "does not exist); without it deleted users cannot be recognised")
    return s.tombstone_secret(), EventTypes(s.event_types)


# ---- the event store, as retraining sees it ------------------------------------------------
@dataclass(frozen=True)
class LoggedEvent:
    id: int
    user: str
    item: str
    event_type: str | None
    time: float  # event time: the client's timestamp, else the arrival time


class StoreView:
    """What retraining reads from the service's :class:`~attnrec.serving.store.EventStore`.

    ``erasures``: tombstone keys recorded with the current bundle
    (``erasures.json``), which count as deletions even in a fresh database.
    """

    def __init__(self, store, erasures: Iterable[str] = ()):
        self.store = store
        self.erasures = set(erasures)

    @classmethod
    def open(cls, url: str, secret: bytes, bundle: Path | None = None) -> "StoreView":
        from attnrec.serving.erasure import SecretMismatch, read_erasures
        from attnrec.serving.store import EventStore

        try:
            erasures = read_erasures(bundle, secret) if bundle is not None else set()  # checks the secret
        except SecretMismatch as e:
            raise ValueError(str(e)) from None
        return cls(EventStore(url, secret=secret), erasures)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "StoreView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def store_id(self) -> str:
        return self.store.store_id()

    def last_event_id(self) -> int:
        return self.store.max_event_id()

    def events(self, after_id: int, upto_id: int, batch: int = 10_000) -> Iterator[LoggedEvent]:
        """Events with ``after_id < id <= upto_id``, read ``batch`` rows at a time."""
        for e in self.store.iter_events(after_id=after_id, upto_id=upto_id, batch=batch):
            yield LoggedEvent(int(e.id), e.user, e.item, e.event_type, float(e.timestamp))

    def deleted_user_test(self):
        """``f(user) -> bool``: whether the user asked to be deleted (store or bundle tombstone)."""
        digests = self.store.deleted_digests() | self.erasures
        digest = self.store.digest
        return lambda user: digest(user) in digests

    def deleted_items(self) -> set[str]:
        return self.store.deleted_items()

    def catalogue_updates(self) -> list:
        """Item metadata the service manages (``POST /items``, ``PATCH /items/{item}``)."""
        return self.store.items()


# ---- the training log ----------------------------------------------------------------------
@dataclass
class TrainingLog:
    data: SequenceData  # every kept positive event, per user in event-time order
    last_event_id: int  # the newest stored event id the log has read
    active_users: np.ndarray  # dense users with at least one stored event in the log
    counts: dict[str, int] = field(default_factory=dict)


def build_training_log(bundle: Recommender, store: StoreView, event_types: EventTypes,
                       after_id: int = 0, upto_id: int | None = None, batch: int = 10_000) -> TrainingLog:
    """Fit-time histories of ``bundle`` + stored events with ``after_id < id <= upto_id`` (see module doc).

    ``upto_id`` defaults to the newest stored event now; events arriving while
    the log is read are left for the next round. A deleted user is left out
    entirely: their fit-time history and any event stored after the deletion
    (which the service keeps serving from the store).
    """
    upto = store.last_event_id() if upto_id is None else int(upto_id)
    is_deleted = store.deleted_user_test()
    gone_items = store.deleted_items()
    fit = bundle.train_data_
    counts = dict.fromkeys(("fit_events", "stored_events", "stored_used", "duplicates", "deleted_users",
                            "deleted_user_events", "not_positive", "deleted_item_events",
                            "new_users", "new_items"), 0)

    users: list[str] = []  # raw ids in first-appearance order (bundle users first)
    user_index: dict[str, int] = {}
    items = IdMap(offset=1)
    col_user: list[np.ndarray] = []
    col_item: list[np.ndarray] = []
    col_time: list[np.ndarray] = []
    col_order: list[np.ndarray] = []  # tie-break inside equal times: fit position, then arrival
    col_stored: list[np.ndarray] = []

    # fit-time histories: keep the bundle's dense order for items (stable ids help warm starts)
    old_items = fit.item_map.raw_ids
    item_remap = np.zeros(fit.n_items + 1, dtype=np.int64)
    for dense, raw in enumerate(old_items, start=1):
        if raw not in gone_items:
            item_remap[dense] = items.add(raw)
    ts_all = fit.timestamps
    n_fit = fit.n_interactions
    for u, raw_user in enumerate(fit.user_map.raw_ids):
        lo, hi = int(fit.indptr[u]), int(fit.indptr[u + 1])
        if is_deleted(raw_user):
            counts["deleted_users"] += 1
            counts["deleted_user_events"] += hi - lo
            continue
        seq = item_remap[fit.items[lo:hi]]
        keep = seq > 0
        counts["deleted_item_events"] += int((~keep).sum())
        if not keep.any():
            continue
        ui = user_index.setdefault(raw_user, len(users))
        if ui == len(users):
            users.append(raw_user)
        t = (np.asarray(ts_all[lo:hi], dtype=np.float64) if ts_all is not None
             else np.full(hi - lo, -np.inf))
        t = np.where(np.isnan(t), -np.inf, t)  # unknown fit time: before every stored event
        col_user.append(np.full(int(keep.sum()), ui, dtype=np.int64))
        col_item.append(seq[keep])
        col_time.append(t[keep])
        col_order.append(np.arange(lo, hi, dtype=np.int64)[keep])
        col_stored.append(np.zeros(int(keep.sum()), dtype=bool))
    counts["fit_events"] = int(sum(len(c) for c in col_item))
    order_base = n_fit
    n_bundle_items = len(items)

    b_user, b_item, b_time, b_order = [], [], [], []
    deleted_cache: dict[str, bool] = {}

    def flush() -> None:
        if b_user:
            col_user.append(np.asarray(b_user, dtype=np.int64))
            col_item.append(np.asarray(b_item, dtype=np.int64))
            col_time.append(np.asarray(b_time, dtype=np.float64))
            col_order.append(np.asarray(b_order, dtype=np.int64))
            col_stored.append(np.ones(len(b_user), dtype=bool))
            b_user.clear(), b_item.clear(), b_time.clear(), b_order.clear()

    for ev in store.events(after_id, upto, batch):
        counts["stored_events"] += 1
        dead = deleted_cache.get(ev.user)
        if dead is None:
            dead = deleted_cache[ev.user] = is_deleted(ev.user)
        if dead:
            counts["deleted_user_events"] += 1
            continue
        if not event_types.is_positive(ev.event_type):
            counts["not_positive"] += 1
            continue
        if ev.item in gone_items:
            counts["deleted_item_events"] += 1
            continue
        ui = user_index.setdefault(ev.user, len(users))
        if ui == len(users):
            users.append(ev.user)
        b_user.append(ui)
        b_item.append(items.add(ev.item))
        b_time.append(ev.time)
        b_order.append(order_base + ev.id)
        if len(b_user) >= batch:
            flush()
    flush()
    counts["deleted_users"] += sum(1 for u, d in deleted_cache.items() if d and u not in fit.user_map)

    cat = lambda cols, dt: np.concatenate(cols) if cols else np.zeros(0, dt)  # noqa: E731
    u_a, i_a, t_a = cat(col_user, np.int64), cat(col_item, np.int64), cat(col_time, np.float64)
    o_a, s_a = cat(col_order, np.int64), cat(col_stored, bool)
    # per user, in event-time order; ties keep fit position, then arrival order
    perm = np.lexsort((o_a, t_a, u_a))
    u_a, i_a, t_a, s_a = u_a[perm], i_a[perm], t_a[perm], s_a[perm]
    # the same (user, item, time) twice is one event seen twice (a retried post, or a stored
    # copy of a fit-time event); the first (fit-time) copy stays. Unknown times never match.
    known = np.isfinite(t_a)
    dup = np.zeros(len(u_a), dtype=bool)
    if known.any():
        idx = np.nonzero(known)[0]
        key = np.rec.fromarrays([u_a[idx], i_a[idx], t_a[idx]])
        _, first = np.unique(key, return_index=True)
        dup[idx] = True
        dup[idx[first]] = False
    counts["duplicates"] = int(dup.sum())
    u_a, i_a, t_a, s_a = u_a[~dup], i_a[~dup], t_a[~dup], s_a[~dup]
    counts["stored_used"] = int(s_a.sum())

    # drop users left without events; users keep first-appearance order
    present = np.zeros(len(users), dtype=bool)
    present[u_a] = True
    new_index = np.cumsum(present) - 1
    user_map = IdMap((u for u, p in zip(users, present) if p), offset=0)
    u_a = new_index[u_a]
    lengths = np.bincount(u_a, minlength=len(user_map))
    indptr = np.zeros(len(user_map) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    times = np.where(np.isfinite(t_a), t_a, np.nan)
    data = SequenceData(indptr, i_a, len(items), user_map, items,
                        None if np.isnan(times).all() else times)
    active = np.unique(u_a[s_a])
    counts["new_users"] = sum(1 for u in user_map.raw_ids if u not in fit.user_map)
    counts["new_items"] = len(items) - n_bundle_items
    log.info("training log: %d events of %d users (%s)", data.n_interactions, data.n_users, counts)
    return TrainingLog(data, max(upto, int(after_id)), active, counts)


# ---- holdout and scoring ---------------------------------------------------------------------
@dataclass
class HeldOutCases:
    """Next-event cases in raw ids, so that models with different id maps score the same cases."""

    users: list[str]
    histories: list[list[str]]
    targets: list[str]

    def __len__(self) -> int:
        return len(self.users)


def holdout_latest(data: SequenceData, users: np.ndarray) -> tuple[SequenceData, HeldOutCases]:
    """``data`` without the latest event of each of ``users`` that has a history before it.

    Users with a single event keep it (there is nothing to predict it from).
    """
    lengths = data.lengths
    users = np.asarray([u for u in np.asarray(users, dtype=np.int64) if lengths[u] >= 2], dtype=np.int64)
    drop = data.indptr[users + 1] - 1  # position of each user's latest event
    keep = np.ones(data.n_interactions, dtype=bool)
    keep[drop] = False
    new_len = lengths.copy()
    new_len[users] -= 1
    indptr = np.zeros_like(data.indptr)
    np.cumsum(new_len, out=indptr[1:])
    ts = None if data.timestamps is None else data.timestamps[keep]
    train = SequenceData(indptr, data.items[keep], data.n_items, data.user_map, data.item_map, ts)
    imap, umap = data.item_map, data.user_map
    cases = HeldOutCases(
        users=[umap.to_raw(int(u)) for u in users],
        histories=[imap.decode(data.items[data.indptr[u]: data.indptr[u + 1] - 1]) for u in users],
        targets=[imap.to_raw(int(data.items[p])) for p in drop],
    )
    return train, cases


def score_cases(model: Recommender, cases: HeldOutCases, ks: Sequence[int] = (10,),
                batch_size: int = 256) -> dict[str, float]:
    """Full-ranking HR@K / NDCG@K of ``model`` on ``cases`` (history items excluded).

    History items the model does not know are dropped from its input; a target
    it does not know is a miss (it cannot be recommended), so models with
    different catalogues are compared on the same cases.
    """
    from attnrec.evaluation import metrics_from_ranks
    from attnrec.ranking import exclusion_mask, ranks_of_targets

    if len(cases) == 0:
        raise ValueError("no held-out cases to score")
    get = model.item_map_.get
    ranks: list[np.ndarray] = []
    for start in range(0, len(cases), batch_size):
        hist = [np.asarray([d for d in (get(r) for r in h) if d is not None], dtype=np.int64)
                for h in cases.histories[start: start + batch_size]]
        tgt = [get(t) for t in cases.targets[start: start + batch_size]]
        with torch.no_grad():
            scores = model.score(hist).float()
        scores = scores.masked_fill(exclusion_mask(hist, scores.shape[1]), float("-inf"))
        known = [i for i, t in enumerate(tgt) if t is not None]
        r = [np.array([np.inf]) for _ in tgt]
        if known:
            for i, rk in zip(known, ranks_of_targets(scores[known], [np.array([tgt[i]]) for i in known])):
                r[i] = rk
        ranks.extend(r)
    per = metrics_from_ranks(ranks, ks)
    out = {k: float(v.mean()) for k, v in per.items() if k.startswith(("HR@", "NDCG@"))}
    out["cases"] = len(cases)
    return out


# ---- writing -----------------------------------------------------------------------------------
def write_bundle_atomically(model: Recommender, out: Path, metrics: dict, info: dict,
                            catalogue: Catalogue | None = None, extra_files: Sequence[Path] = ()) -> Path:
    """Write the bundle into a temporary sibling directory, then rename it to ``out``.

    If ``out`` exists it is moved to ``<out>.previous`` first (one rename each
    way; the service keeps serving the bundle it loaded meanwhile, and its
    watcher reloads when the new ``config.json`` appears).
    """
    from attnrec.pipeline import save_bundle

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_bundle(model, tmp, metrics=metrics, info=info, catalogue=catalogue)
        for f in extra_files:
            shutil.copyfile(f, tmp / f.name)
        for p in tmp.iterdir():  # the data is on disk before the rename makes it visible
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            previous = out.with_name(out.name + ".previous")
            if previous.exists():
                shutil.rmtree(previous)
            os.rename(out, previous)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- one retraining round ------------------------------------------------------------------------
@dataclass
class RetrainResult:
    accepted: bool
    written: Path | None
    current: dict[str, float]
    candidate: dict[str, float]
    tolerance: float
    last_event_id: int
    fit_seconds: float
    counts: dict[str, int]
    warm_start: bool

    def summary(self) -> str:
        verdict = "accepted" if self.accepted else "refused"
        return (f"{GUARD_METRIC} on {self.current['cases']} held-out latest events (full ranking): "
                f"current {self.current[GUARD_METRIC]:.4f} (HR@10 {self.current['HR@10']:.4f}), "
                f"candidate {self.candidate[GUARD_METRIC]:.4f} (HR@10 {self.candidate['HR@10']:.4f}); "
                f"tolerance {self.tolerance}: {verdict}")


def retrain(bundle: Path, db_url: str, out: Path, *, tolerance: float = 0.01, warm_start: bool = False,
            warm_epochs: int | None = None, params: dict[str, Any] | None = None,
            event_types: EventTypes | None = None, secret: bytes, threads: int | None = None,
            candidate_hook=None) -> RetrainResult:
    """One retraining round from ``bundle`` and the event store at ``db_url`` (see module doc).

    ``secret`` and ``event_types`` must be the service's (``ATTNREC_SECRET`` or
    ``data_dir/secret.key``; ``ATTNREC_EVENT_TYPES``), or deleted users are not
    recognised and feedback types are misread. ``params`` override the bundle's hyperparameters (e.g. a shorter budget).
    ``candidate_hook(model)`` is called on the fitted candidate before it is
    scored (tests use it to break a candidate on purpose).
    """
    from attnrec.data.catalogue import read_catalogue
    from attnrec.pipeline import build_model

    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    bundle = Path(bundle)
    current = Recommender.load(bundle)
    config = json.loads((bundle / "config.json").read_text())
    info_old = config.get("info", {}) or {}
    event_types = event_types or EventTypes()
    with StoreView.open(db_url, secret, bundle) as store:
        store_id = store.store_id()
        # events the bundle already contains come only from the same store
        after = int(info_old.get(LAST_EVENT_ID, 0)) if info_old.get(STORE_ID) == store_id else 0
        tlog = build_training_log(current, store, event_types, after_id=after)
        catalogue_updates = store.catalogue_updates()
    train_data, cases = holdout_latest(tlog.data, tlog.active_users)
    if len(cases) == 0:
        raise ValueError("nothing to retrain on: no user has a new stored event after a history "
                         f"(stored events read after id {after}: {tlog.counts['stored_events']})")

    hp = dict(config["params"])
    hp.update(params or {})
    if "progress" in hp:
        hp["progress"] = False
    if threads is not None and "num_threads" in hp:
        hp["num_threads"] = int(threads)
    if warm_start:
        if not current.supports(Capability.WARM_START):
            raise ValueError(f"the {current.model_name} model cannot be warm-started; retrain from scratch")
        if warm_epochs is not None:
            hp["epochs"] = int(warm_epochs)
    model = build_model(config["model"], hp)
    if warm_start:
        model.warm_start_from(current)  # item rows follow their raw ids into the new id map
    t0 = time.perf_counter()
    model.fit(train_data)
    fit_seconds = time.perf_counter() - t0
    if candidate_hook is not None:
        candidate_hook(model)

    cur = score_cases(current, cases)
    cand = score_cases(model, cases)
    accepted = cand[GUARD_METRIC] >= cur[GUARD_METRIC] - tolerance
    result = RetrainResult(accepted, None, cur, cand, tolerance, tlog.last_event_id, fit_seconds,
                           tlog.counts, warm_start)
    log.info(result.summary())
    if not accepted:
        return result

    # served histories: the whole log (the held-out events too); weights: fitted without them
    model.train_data_ = tlog.data
    info = {
        "data": f"retrained from {bundle.name} + event store",
        "holdout": "latest event of each active user (guard only)",
        LAST_EVENT_ID: tlog.last_event_id,
        STORE_ID: store_id,
        "retrained_from": config.get("saved_at"),
        "warm_start": warm_start,
        "event_types": dict(event_types.weights),  # what the service compares with its own
    }
    metrics = {"retrain": {
        "protocol": "next event: each active user's latest stored event held out; full ranking; "
                    "history items excluded",
        "current": cur, "candidate": cand, "tolerance": tolerance, "metric": GUARD_METRIC,
        "accepted": True, "fit_seconds": fit_seconds, "warm_start": warm_start,
        "log": tlog.counts,
    }}
    catalogue = merged_catalogue(read_catalogue(bundle), catalogue_updates)
    extra = [bundle / "erasures.json"]  # the service merges the list on load; keep it with the bundle
    result.written = write_bundle_atomically(model, out, metrics, info, catalogue,
                                             [p for p in extra if p.exists()])
    return result


def merged_catalogue(catalogue: Catalogue, updates: Sequence) -> Catalogue:
    """The bundle's catalogue with the service's changes applied.

    Items deleted from the catalogue leave it; items registered or edited
    through the service (name, description, first category) enter or change.
    """
    out = dict(catalogue)
    for st in updates:
        if st.deleted:
            out.pop(st.item, None)
            continue
        old = out.get(st.item, CatalogueEntry(None, None, None))
        out[st.item] = CatalogueEntry(
            st.name if st.name is not None else old.name,
            st.categories[0] if st.categories else old.category,
            st.description if st.description is not None else old.description)
    return out


# ---- export --------------------------------------------------------------------------------------
EXPORT_COLUMNS = ("user_id", "item_id", "timestamp", "event_type", "event_id")


def export_events(db_url: str, out: Path, *, secret: bytes, positives_only: bool = False,
                  event_types: EventTypes | None = None, batch: int = 10_000) -> dict[str, int]:
    """Stream the stored events to ``out`` (``.parquet`` or ``.csv``), ``batch`` rows at a time.

    Columns: ``user_id, item_id, timestamp, event_type, event_id`` (what
    ``attnrec train`` reads); deleted users are left out. ``positives_only``
    also leaves out negative and exclude-only types, so the file trains as the
    service's settings mean it.
    """
    import pyarrow as pa

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"--out must end in .parquet or .csv, got {out.name!r}")
    event_types = event_types or EventTypes()
    schema = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.float64()),
                        ("event_type", pa.string()), ("event_id", pa.int64())])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    counts = {"written": 0, "deleted_user_events": 0, "not_positive": 0}
    with StoreView.open(db_url, secret) as store:
        is_deleted = store.deleted_user_test()
        upto = store.last_event_id()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(tmp, schema)
        else:
            import pyarrow.csv as pcsv

            writer = pcsv.CSVWriter(tmp, schema)
        try:
            cols: dict[str, list] = {c: [] for c in EXPORT_COLUMNS}

            def flush() -> None:
                if cols["user_id"]:
                    writer.write_table(pa.table(cols, schema=schema))
                    for v in cols.values():
                        v.clear()

            for ev in store.events(0, upto, batch):
                if is_deleted(ev.user):
                    counts["deleted_user_events"] += 1
                    continue
                if positives_only and not event_types.is_positive(ev.event_type):
                    counts["not_positive"] += 1
                    continue
                cols["user_id"].append(ev.user)
                cols["item_id"].append(ev.item)
                cols["timestamp"].append(ev.time)
                cols["event_type"].append(ev.event_type)
                cols["event_id"].append(ev.id)
                counts["written"] += 1
                if len(cols["user_id"]) >= batch:
                    flush()
            flush()
        finally:
            writer.close()
    os.replace(tmp, out)
    return counts
