"""The service state: current model snapshot, event store and per-user cache.

Concurrency rules, kept deliberately simple:

* ``current`` (the :class:`ModelSnapshot`) is swapped as one reference
  assignment; readers take it once per request.
* Every change of a user's stored state (ingest commit, deletion, loading a
  user from the database into the cache) happens under ``_lock``, so the cache
  always equals the database. Readers of a cached user take no lock, which keeps
  the hot path off the lock and off the database.
* A :class:`UserEntry` is never mutated once published except for memoised,
  derived values; an ingest publishes a new entry, which also drops that user's
  cached recommendations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from attnrec.serving.engine import BadRequest, ModelSnapshot, load_snapshot
from attnrec.serving.metrics import Metrics
from attnrec.serving.settings import Settings
from attnrec.serving.store import EventStore

log = logging.getLogger(__name__)


#: event id of an ingest this process has not read back yet: newer than any bundle's events
_NEWEST = sys.maxsize


class UserEntry:
    """A user's stored events (raw item ids and event ids, arrival order) and memoised derivations."""

    __slots__ = ("items", "ids", "tombstoned", "_seq", "recs")

    def __init__(self, items: tuple[str, ...], tombstoned: bool, ids: tuple[int, ...] | None = None):
        self.items = items
        self.ids = ids if ids is not None else (_NEWEST,) * len(items)
        self.tombstoned = tombstoned  # deleted once: the bundle's fit history stays hidden
        self._seq: tuple[str, np.ndarray, bool] | None = None
        self.recs: OrderedDict = OrderedDict()

    def sequence(self, snap: ModelSnapshot, user: str) -> tuple[np.ndarray, bool]:
        """``(dense history, known to the model)`` under ``snap``: fit history + stored events.

        Stored events the bundle already contains (a retrained bundle records the
        last event id it includes) are not appended a second time.
        """
        memo = self._seq
        if memo is not None and memo[0] == snap.version:
            return memo[1], memo[2]
        fit = None if self.tombstoned else snap.fit_history(user)
        # only a user whose fit-time history is used can have stored events inside it
        through = snap.included_event_id if fit is not None else 0
        items = self.items if not through else [i for i, e in zip(self.items, self.ids) if e > through]
        stored, _ = snap.encode_items(items)
        seq = stored if fit is None else np.concatenate([np.asarray(fit, dtype=np.int64), stored])
        self._seq = (snap.version, seq, fit is not None)
        return seq, fit is not None


class RecService:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.current: ModelSnapshot | None = None
        self.store: EventStore | None = None
        self._cache: OrderedDict[str, UserEntry] = OrderedDict()
        self._deleted: set[str] = set()
        # users with at least one stored event: anyone else needs no database read
        self._has_events: set[str] = set()
        self._lock = threading.Lock()
        self._reload_lock = asyncio.Lock()
        self._watch_task: asyncio.Task | None = None
        self._watched: tuple | None = None
        self.store_id = ""

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self.store = EventStore(s.resolved_database_url, secret=s.tombstone_secret(), timeout_s=s.db_timeout_s)
        self.store_id = self.store.store_id()
        self._deleted = self.store.deleted_digests()
        self._has_events = self.store.users_with_events()
        self._install(load_snapshot(s.model_path, s.explain_top, s.index))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _install(self, snap: ModelSnapshot) -> None:
        old = self.current
        snap.bind_store(self.store_id)
        if old is not None and old.included_event_id != snap.included_event_id:
            # entries built from ingests hold no event ids: rebuild them from the database,
            # which knows which of their events the new bundle already contains
            with self._lock:
                self._cache.clear()
                self.metrics.cached_users.set(0)
        self.current = snap
        self.metrics.set_model(snap.version, snap.model_name, time.time())
        self._watched = _stat(snap.path)

    @property
    def snap(self) -> ModelSnapshot:
        if self.current is None:
            raise RuntimeError("no model loaded")
        return self.current

    async def add_items(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Describe new (or existing) items to a content-aware model: recommendable at once, no retraining.

        The live model is never mutated: a copy gets the items and is swapped in
        atomically, so requests in flight finish on the old one. A reload from
        disk (API or file change) returns to the bundle's catalogue.
        """
        if len(rows) > self.settings.max_batch:
            raise BadRequest(f"at most {self.settings.max_batch} items per request, got {len(rows)}")
        async with self._reload_lock:
            old = self.snap
            if not callable(getattr(old.model, "add_items", None)):
                raise BadRequest(
                    f"the served model ({old.model_name}) cannot take new items without retraining; "
                    "serve a content-aware model such as sasrec-content"
                )
            new = await asyncio.to_thread(_with_items, old, rows, self.settings)
            self._install(new)
            log.info("added %d item(s): %s -> %s", len(rows), old.version, new.version)
            return {"added": [r["item_id"] for r in rows], "model_version": new.version}

    async def reload(self, path: str | Path | None = None) -> tuple[str, str]:
        """Load a bundle off the event loop and swap it in; the old one keeps serving meanwhile."""
        async with self._reload_lock:
            old = self.snap
            target = Path(path) if path is not None else old.path
            try:
                new = await asyncio.to_thread(load_snapshot, target, self.settings.explain_top, self.settings.index)
            except Exception:
                self.metrics.reloads.labels("error").inc()
                raise
            self._install(new)
            self.metrics.reloads.labels("ok").inc()
            log.info("model reloaded: %s -> %s", old.version, new.version)
            return old.version, new.version

    async def watch(self) -> None:
        """Reload when the bundle's config.json changes (it is written last by ``save``)."""
        interval = self.settings.watch_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                path = self.snap.path
                st = _stat(path)
                if st is None or st == self._watched:
                    continue
                await asyncio.sleep(min(interval, 0.5))  # let a writer finish the file
                if _stat(path) != st:
                    continue
                log.info("%s/config.json changed; reloading", path)
                await self.reload(path)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad bundle must not kill the watcher
                log.exception("reload on file change failed; still serving %s", self.snap.version)
                self._watched = _stat(self.snap.path)

    # ---- users ---------------------------------------------------------------
    def cached_user(self, user: str) -> UserEntry | None:
        """Lock-free cache lookup for the hot path (None: load it with ``load_user``)."""
        entry = self._cache.get(user)
        if entry is not None:
            try:
                self._cache.move_to_end(user)
            except KeyError:  # evicted or deleted meanwhile; the entry we hold is still valid
                pass
        return entry

    def user_without_events(self, user: str) -> UserEntry | None:
        """Entry for a user with no stored events, built without the database or the lock.

        Safe against a concurrent ingest or deletion because both publish first
        (``_has_events`` / ``_deleted``) and touch the cache second, while this
        inserts first and re-checks second. None: the user has events (use ``load_user``).
        """
        if user in self._has_events:
            return None
        digest = self.store.digest(user)
        entry = UserEntry((), digest in self._deleted)
        self._cache[user] = entry
        if user in self._has_events or (not entry.tombstoned and digest in self._deleted):
            self._cache.pop(user, None)
        elif len(self._cache) > self.settings.user_cache_size:
            try:
                self._cache.popitem(last=False)
            except KeyError:
                pass
        return entry

    def load_user(self, user: str) -> UserEntry:
        """Cache entry of ``user``, reading the database on a miss (blocking)."""
        with self._lock:
            entry = self._cache.get(user)
            if entry is None:
                stored = self.store.user_events(user)
                entry = UserEntry(tuple(e.item for e in stored), self.store.digest(user) in self._deleted,
                                  tuple(e.id for e in stored))
                self._put(user, entry)
            return entry

    def _put(self, user: str, entry: UserEntry) -> None:
        # caller holds _lock
        self._cache[user] = entry
        self._cache.move_to_end(user)
        while len(self._cache) > self.settings.user_cache_size:
            self._cache.popitem(last=False)
        self.metrics.cached_users.set(len(self._cache))

    def is_known(self, snap: ModelSnapshot, user: str, entry: UserEntry | None) -> bool:
        if snap.user_map.get(user) is None:
            return False
        if entry is not None:
            return not entry.tombstoned
        return self.store.digest(user) not in self._deleted

    def ingest(self, rows: Sequence[dict]) -> dict[str, Any]:
        """Commit events, then update cached sequences; returns the acknowledgement."""
        snap = self.snap
        with self._lock:
            self.store.add_events(rows)  # committed when this returns
            by_user: dict[str, list[str]] = {}
            for r in rows:
                by_user.setdefault(r["user_id"], []).append(r["item_id"])
            self._has_events.update(by_user)  # publish before touching the cache
            for user, items in by_user.items():
                old = self._cache.get(user)
                if old is not None:
                    self._put(user, UserEntry(old.items + tuple(items), old.tombstoned,
                                              old.ids + (_NEWEST,) * len(items)))
        get_item, get_user = snap.item_map.get, snap.user_map.get
        unknown_items = sum(1 for r in rows if get_item(r["item_id"]) is None)
        unknown_users = sum(1 for r in rows if get_user(r["user_id"]) is None
                            or self.store.digest(r["user_id"]) in self._deleted)
        m = self.metrics
        m.events.inc(len(rows))
        if unknown_items:
            m.unknown_item_events.inc(unknown_items)
        if unknown_users:
            m.unknown_user_events.inc(unknown_users)
        return {"stored": len(rows), "unknown_items": unknown_items, "unknown_users": unknown_users,
                "model_version": snap.version}

    def delete_user(self, user: str) -> int | None:
        """Remove the user's events and cached state; None if the user was unknown."""
        snap = self.snap
        with self._lock:
            digest = self.store.digest(user)
            in_model = snap.user_map.get(user) is not None and digest not in self._deleted
            has_events = bool(self.store.user_items(user))
            if not in_model and not has_events:
                return None
            n = self.store.delete_user(user)
            self._deleted.add(digest)  # publish before touching the cache
            self._has_events.discard(user)
            self._cache.pop(user, None)  # drops the cached sequence and recommendations
            self.metrics.cached_users.set(len(self._cache))
        self.metrics.deleted_users.inc()
        log.info("deleted a user and %d events", n)  # the id itself is not logged
        return n

    # ---- recommendations -----------------------------------------------------
    def recommend_history(self, snap: ModelSnapshot, history: np.ndarray, known: bool, *, k: int,
                          exclude_seen: bool, exclude: Sequence[str], categories: Sequence[str],
                          exclude_categories: Sequence[str], explain: bool) -> dict[str, Any]:
        """Recommendation payload for a dense history (model) or the popularity fallback."""
        allowed = snap.allowed_mask(categories, exclude_categories)
        excl, _ = snap.encode_items(exclude) if exclude else (None, None)
        use_model = known and len(history) > 0
        seen = history if exclude_seen else None
        if use_model and snap.index is not None:  # large catalogue: FAISS instead of scoring every item
            ids, vals = snap.retrieve(history, k, seen, excl, allowed)
        else:
            if use_model:
                scores = snap.score(history)
            else:
                scores = snap.pop_scores.clone()
                self.metrics.fallbacks.inc()
            ids, vals = snap.rank(scores, k, seen, excl, allowed)
        cat = snap.catalogue
        items = []
        for raw, sc in zip(snap.raw_items(ids), vals.tolist()):
            e = cat.get(raw) if cat is not None else None
            items.append({"item": raw, "score": sc, "name": e.name if e else None,
                          "category": e.category if e else None})
        if explain:
            if use_model:
                method, expl = snap.explain(history, ids)
            else:
                method, expl = "popularity", [[] for _ in items]
            # decode every explaining item in one go
            raws = iter(snap.raw_items([d for triples in expl for _, d, _ in triples]))
            for it, triples in zip(items, expl):
                because = []
                for pos, _, w in triples:
                    raw = next(raws)
                    e = cat.get(raw) if cat is not None else None
                    because.append({"item": raw, "position": pos, "weight": w,
                                    "name": e.name if e else None})
                it["explanation"] = {"method": method, "because": because}
        return {"source": "model" if use_model else "popularity-fallback",
                "model_version": snap.version, "items": items}

    def recommend_user(self, snap: ModelSnapshot, user: str, entry: UserEntry, q) -> dict[str, Any]:
        key = (snap.version, q.k, q.exclude_seen, tuple(q.exclude), tuple(q.categories),
               tuple(q.exclude_categories), q.explain)
        cap = self.settings.rec_cache_per_user
        if cap:
            hit = entry.recs.get(key)
            if hit is not None:
                return hit
        history, known = entry.sequence(snap, user)
        # a user the model cannot place yet (new, or deleted and not retrained) gets
        # popular items they have not seen, labelled "popularity-fallback"
        out = self.recommend_history(
            snap, history, known, k=q.k, exclude_seen=q.exclude_seen, exclude=q.exclude,
            categories=q.categories, exclude_categories=q.exclude_categories, explain=q.explain)
        out = {"user": user, **out}
        if cap:
            recs = entry.recs
            recs[key] = out
            while len(recs) > cap:
                try:
                    recs.popitem(last=False)
                except KeyError:
                    break
        return out


def _with_items(old: ModelSnapshot, rows: list[dict[str, Any]], settings: Settings) -> ModelSnapshot:
    import copy

    from attnrec.serving.engine import CatalogueEntry

    model = copy.deepcopy(old.model)
    model.add_items(rows)
    catalogue = dict(old.catalogue or {})
    for r in rows:
        catalogue[r["item_id"]] = CatalogueEntry(r.get("name"), r.get("category"), r.get("description"))
    version = f"{old.version}+items{len(model.item_map_)}"
    return ModelSnapshot(old.path, model, version, old.config, catalogue, settings.explain_top, settings.index)


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path / "config.json")
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


__all__ = ["RecService", "UserEntry", "BadRequest"]
