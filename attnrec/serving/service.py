"""The service state: current model snapshot, event store, catalogue state and per-user cache.

Concurrency rules, kept deliberately simple:

* ``current`` (the :class:`ModelSnapshot`) is swapped as one reference
  assignment; readers take it once per request.
* Database calls never run under ``_lock``: a stalled write (a locked database)
  must not hold up reads. ``_lock`` only guards the cache bookkeeping, and a
  load that raced with an ingest or a deletion of the same user is not cached.
* A :class:`UserEntry` is never mutated once published except for memoised,
  derived values; an ingest publishes a new entry, which also drops that user's
  cached recommendations.
* Other workers' writes reach this process through the sync loop (every
  ``sync_interval_s``): it polls the shared database for events, deletions and
  catalogue changes and drops or updates what this process cached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from attnrec.models.base import Capability
from attnrec.serving.catalogue import CatalogueState
from attnrec.serving.engine import BadRequest, ModelSnapshot, load_snapshot, mask_cache_bytes
from attnrec.serving.erasure import read_erasures, write_erasures
from attnrec.serving.feedback import EventTypes, Kind
from attnrec.serving.metrics import Metrics
from attnrec.serving.settings import Settings
from attnrec.serving.store import EventStore, StoredEvent

log = logging.getLogger(__name__)

# rough bytes per cached thing, for the cache's memory bound (CPython objects, measured
# once with tracemalloc on the demo bundle; an estimate, not an accounting)
_ENTRY_BYTES, _EVENT_BYTES = 600, 200
_RESULT_BYTES, _RESULT_ITEM_BYTES, _BECAUSE_BYTES = 800, 450, 350
_ARRAY_BYTES = 3 * 112  # numpy array headers


class UserEntry:
    """A user's stored events (event-time order) and memoised derivations."""

    __slots__ = ("events", "ids", "items", "item_ids", "negatives", "excluded", "tombstoned", "_seq",
                 "recs", "nbytes", "unaccounted")

    def __init__(self, events: tuple[StoredEvent, ...], tombstoned: bool, types: EventTypes):
        self.events = events
        self.ids = frozenset(e.id for e in events)
        kinds = [types.kind(e.event_type) for e in events]
        self.items = tuple(e.item for e, k in zip(events, kinds) if k is Kind.POSITIVE)
        self.item_ids = tuple(e.id for e, k in zip(events, kinds) if k is Kind.POSITIVE)
        self.negatives = tuple(sorted({e.item for e, k in zip(events, kinds) if k is Kind.NEGATIVE}))
        self.excluded = tuple(sorted({e.item for e, k in zip(events, kinds) if k is Kind.EXCLUDE}))
        self.tombstoned = tombstoned  # deleted once: the bundle's fit history stays hidden
        self._seq: tuple | None = None
        self.recs: OrderedDict = OrderedDict()
        self.nbytes = _ENTRY_BYTES + _EVENT_BYTES * len(events)
        self.unaccounted = 0  # memoised arrays not yet counted by the cache

    def merged(self, new: Sequence[StoredEvent], types: EventTypes) -> "UserEntry":
        fresh = [e for e in new if e.id not in self.ids]
        if not fresh:
            return self
        events = tuple(sorted((*self.events, *fresh), key=lambda e: (e.timestamp, e.id)))
        return UserEntry(events, self.tombstoned, types)

    def _memo(self, snap: ModelSnapshot, user: str) -> tuple:
        memo = self._seq
        if memo is not None and memo[0] == snap.version:
            return memo
        fit = None if self.tombstoned else snap.fit_history(user)
        # a retrained bundle's histories already hold the stored events up to its last event id:
        # append only later ones (a user without fit history has none of them inside)
        through = snap.included_event_id if fit is not None else 0
        items = self.items if not through else [i for i, e in zip(self.items, self.item_ids) if e > through]
        stored, _ = snap.encode_items(items)
        seq = stored if fit is None else np.concatenate([np.asarray(fit, dtype=np.int64), stored])
        negatives, _ = snap.encode_items(self.negatives)
        excluded, _ = snap.encode_items(self.excluded)
        memo = self._seq = (snap.version, seq, negatives, np.union1d(negatives, excluded).astype(np.int64))
        self.unaccounted += _ARRAY_BYTES + seq.nbytes + memo[2].nbytes + memo[3].nbytes
        return memo

    def sequence(self, snap: ModelSnapshot, user: str) -> np.ndarray:
        """Dense history under ``snap``: fit history + positive events."""
        return self._memo(snap, user)[1]

    def never(self, snap: ModelSnapshot, user: str, exclude_seen: bool) -> np.ndarray:
        """Dense items never to recommend to this user: negatives (+ exclude-only if ``exclude_seen``)."""
        memo = self._memo(snap, user)
        return memo[3] if exclude_seen else memo[2]


class RecService:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.event_types = EventTypes(settings.event_types)
        self.catalogue = CatalogueState()
        self.current: ModelSnapshot | None = None
        self.store: EventStore | None = None
        self._secret = b""
        self._cache: OrderedDict[str, UserEntry] = OrderedDict()
        self._cache_bytes = 0
        self._deleted: set[str] = set()
        # users with at least one stored event: anyone else needs no database read
        self._has_events: set[str] = set()
        self._loading: dict[str, list] = {}  # user -> [loads in flight, invalidated meanwhile]
        self._lock = threading.Lock()
        self._reload_lock = asyncio.Lock()
        self._watch_task: asyncio.Task | None = None
        self._sync_task: asyncio.Task | None = None
        self._watched: tuple | None = None
        self._bundle_link: Path = Path(settings.model_path)  # re-resolved on every reload
        self._deleted_users: dict[str, set[int]] = {}  # snapshot version -> dense users deleted
        # cross-worker sync: event ids already applied here, with their arrival time
        self._applied: dict[int, float] = {}
        self._synced_at = time.time()
        self.store_id = ""

    # ---- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self._secret = s.tombstone_secret()
        self.store = EventStore(s.resolved_database_url, secret=self._secret, timeout_s=s.db_timeout_s)
        self.store_id = self.store.store_id()
        self._synced_at = time.time()
        self._deleted = self.store.deleted_digests()
        self._has_events = self.store.users_with_events()
        self.catalogue.apply(self.store.items())
        self._install(load_snapshot(self._bundle_link, s.explain_top, s.index))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def _install(self, snap: ModelSnapshot) -> None:
        # a fresh database knows no deletions: the bundle's erasure list brings them back
        # before the first request is served, and this database's go into the bundle
        carried = read_erasures(snap.path, self._secret)
        if carried - self._deleted:
            self.store.add_tombstones(carried)
            self._deleted |= carried
        if self._deleted - carried:
            write_erasures(snap.path, self._secret, self._deleted - carried)
        self._deleted_users = {snap.version: self._dense_deleted(snap, self._deleted)}
        trained = (snap.config.get("info") or {}).get("event_types")
        if trained is not None and trained != self.settings.event_types:
            log.warning("the bundle was trained with event types %s, the service declares %s",
                        trained, self.settings.event_types)
        snap.bind_store(self.store_id)
        self.current = snap
        self.metrics.set_model(snap.version, snap.model_name, time.time())
        self._watched = _stat(snap.path)

    def _dense_deleted(self, snap: ModelSnapshot, digests: set[str]) -> set[int]:
        if not digests:
            return set()
        digest = self.store.digest
        return {u for u, raw in enumerate(snap.user_map.raw_ids) if digest(raw) in digests}

    @property
    def snap(self) -> ModelSnapshot:
        if self.current is None:
            raise RuntimeError("no model loaded")
        return self.current

    async def add_items(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Register items in the catalogue (any model); a content-aware model also embeds them.

        The live model is never mutated: a copy gets the items and is swapped in
        atomically, so requests in flight finish on the old one. A reload from
        disk (API or file change) returns to the bundle's embeddings; the catalogue
        entries stay (they live in the database).
        """
        if len(rows) > self.settings.max_batch:
            raise BadRequest(f"at most {self.settings.max_batch} items per request, got {len(rows)}")
        states = []
        for r in rows:
            fields = {k: r[k] for k in ("name", "description", "labels", "expires_at") if r.get(k) is not None}
            cats = r.get("categories") or ([r["category"]] if r.get("category") else None)
            if cats:
                fields["categories"] = cats
            fields["deleted"] = False  # registering an item again brings it back
            states.append(await asyncio.to_thread(self.store.upsert_item, r["item_id"], **fields))
        self.catalogue.apply(states)
        async with self._reload_lock:
            old = self.snap
            embedded: list[str] = []
            if old.model.supports(Capability.ADD_ITEMS):
                model_rows = [{"item_id": r["item_id"], "name": r.get("name"),
                               "category": r.get("category") or (r.get("categories") or [None])[0],
                               "description": r.get("description")} for r in rows]
                new = await asyncio.to_thread(_with_items, old, model_rows, self.settings)
                self._install(new)
                embedded = [r["item_id"] for r in rows]
                log.info("added %d item(s): %s -> %s", len(rows), old.version, new.version)
            known = self.snap.item_map.get
            return {"added": [r["item_id"] for r in rows if known(r["item_id"]) is not None],
                    "registered": [r["item_id"] for r in rows], "embedded": embedded,
                    "model_version": self.snap.version}

    def update_item(self, item: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Change an item's catalogue state (immediate here; other workers within one sync)."""
        state = self.store.upsert_item(item, **changes)
        self.catalogue.apply([state])
        return self.describe_item(self.snap, item)

    def describe_item(self, snap: ModelSnapshot, item: str) -> dict[str, Any]:
        dense = snap.item_map.get(item)
        s = self.catalogue.get(item)
        return {"item": item, "known_to_model": dense is not None,
                **self.catalogue.describe(snap, item),
                "hidden": bool(s and s.hidden), "expires_at": s.expires_at if s else None,
                "recommendable": dense is not None and not self.catalogue.blocked(item),
                "fit_interactions": int(snap.item_counts[dense]) if dense is not None else 0}

    async def reload(self, path: str | Path | None = None) -> tuple[str, str]:
        """Load a bundle off the event loop and swap it in; the old one keeps serving meanwhile.

        Without ``path`` the configured path is resolved again, so a symlink that now
        points at another bundle is followed.
        """
        async with self._reload_lock:
            old = self.snap
            target = Path(path) if path is not None else self._bundle_link
            try:
                new = await asyncio.to_thread(load_snapshot, target, self.settings.explain_top, self.settings.index)
                await asyncio.to_thread(self._install, new)
            except Exception:
                self.metrics.reloads.labels("error").inc()
                raise
            self._bundle_link = target
            self.metrics.reloads.labels("ok").inc()
            log.info("model reloaded: %s -> %s", old.version, new.version)
            return old.version, new.version

    async def watch(self) -> None:
        """Reload when the bundle's config.json changes (it is written last by ``save``), or the
        configured path (a symlink) now resolves to another directory."""
        interval = self.settings.watch_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                path = self._bundle_link.resolve()
                st = _stat(path)
                if st is None or (st == self._watched and path == self.snap.path):
                    continue
                await asyncio.sleep(min(interval, 0.5))  # let a writer finish the file
                if _stat(self._bundle_link.resolve()) != st:
                    continue
                log.info("the bundle changed (%s); reloading", path.name)
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bad bundle must not kill the watcher
                log.exception("reload on file change failed; still serving %s", self.snap.version)
                self._watched = _stat(self._bundle_link.resolve())

    async def sync_loop(self) -> None:
        """Pick up other workers' events, deletions and catalogue changes (see :meth:`sync`)."""
        while True:
            await asyncio.sleep(self.settings.sync_interval_s)
            try:
                await asyncio.to_thread(self.sync)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a database hiccup must not stop the loop
                log.warning("sync with the shared database failed: %s", e)

    def sync(self) -> None:
        """One poll of the shared database.

        Looks back ``2 * db_timeout_s + 2 * sync_interval_s`` before the last poll: a
        transaction commits at most ``db_timeout_s`` after it stamped its rows, so no
        event is missed; ids already applied are skipped.
        """
        s = self.settings
        started = time.time()
        since = self._synced_at - 2 * s.db_timeout_s - 2 * s.sync_interval_s
        rows = self.store.events_since(since)
        tombs = self.store.deleted_digests(since=since)
        items = self.store.items(updated_after=since)
        with self._lock:
            for event_id, user in rows:
                if event_id in self._applied:
                    continue
                self._applied[event_id] = started
                self._has_events.add(user)
                self._invalidate(user)
            new_tombs = tombs - self._deleted
            if new_tombs:
                self._deleted |= new_tombs
                digest = self.store.digest
                for user in [u for u in list(self._cache) if digest(u) in new_tombs]:
                    self._invalidate(user)
                    self._has_events.discard(user)
            horizon = started - 4 * s.db_timeout_s - 4 * s.sync_interval_s
            if len(self._applied) > 1000:
                self._applied = {i: t for i, t in self._applied.items() if t > horizon}
        if new_tombs:
            snap = self.snap
            self._deleted_users.setdefault(snap.version, set()).update(self._dense_deleted(snap, new_tombs))
            write_erasures(snap.path, self._secret, new_tombs)  # in case the deleting worker could not
        self.catalogue.apply(items)
        self._synced_at = started

    # ---- users ---------------------------------------------------------------
    def _digest(self, user: str) -> str:
        return self.store.digest(user)

    def is_deleted_dense(self, snap: ModelSnapshot, dense_user: int) -> bool:
        """Whether the model's user ``dense_user`` was deleted (for listings)."""
        return dense_user in self._deleted_users.get(snap.version, ())

    def deleted_model_users(self, snap: ModelSnapshot) -> int:
        """How many of the model's users were deleted (listings do not count them)."""
        return len(self._deleted_users.get(snap.version, ()))

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
        """Entry for a user with no stored events, built without the database.

        Cached only for users the model knows (ids nobody knows would fill memory
        with entries worth nothing); None: the user has events (use ``load_user``).
        """
        if user in self._has_events:
            return None
        entry = UserEntry((), self._digest(user) in self._deleted, self.event_types)
        if self.snap.user_map.get(user) is None:
            return entry
        with self._lock:
            # an ingest or deletion that got in first wins: serve this entry once, cache nothing
            if (user not in self._has_events and user not in self._cache and user not in self._loading
                    and (self._digest(user) in self._deleted) == entry.tombstoned):
                self._put(user, entry)
        return entry

    def load_user(self, user: str) -> UserEntry:
        """Cache entry of ``user``, reading the database on a miss (blocking, no lock held)."""
        entry = self._cache.get(user)
        if entry is not None:
            return entry
        with self._lock:
            slot = self._loading.setdefault(user, [0, False])
            slot[0] += 1
        try:
            events = tuple(self.store.user_events(user))
        finally:
            with self._lock:
                slot[0] -= 1
                stale = slot[1]
                if slot[0] == 0:
                    del self._loading[user]
        entry = UserEntry(events, self._digest(user) in self._deleted, self.event_types)
        if not stale:
            with self._lock:
                if user not in self._cache:
                    self._put(user, entry)
        return entry

    def _put(self, user: str, entry: UserEntry) -> None:
        # caller holds _lock
        old = self._cache.pop(user, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        self._cache[user] = entry
        self._cache_bytes += entry.nbytes
        self._evict()

    def _invalidate(self, user: str) -> None:
        # caller holds _lock
        old = self._cache.pop(user, None)
        if old is not None:
            self._cache_bytes -= old.nbytes
        slot = self._loading.get(user)
        if slot is not None:
            slot[1] = True
        self._report_cache()

    def _evict(self) -> None:
        s = self.settings
        while self._cache and (len(self._cache) > s.user_cache_size or self._cache_bytes > s.cache_max_bytes):
            try:
                _, old = self._cache.popitem(last=False)
            except KeyError:
                break
            self._cache_bytes -= old.nbytes
        self._report_cache()

    def report_filter_caches(self) -> None:
        snap = self.current
        total = mask_cache_bytes(self.catalogue.masks())
        if snap is not None:
            total += snap.filter_cache_bytes()
        self.metrics.filter_cache_bytes.set(total)

    def _report_cache(self) -> None:
        self.metrics.cached_users.set(len(self._cache))
        self.metrics.cache_bytes.set(max(self._cache_bytes, 0))

    def _account(self, user: str, entry: UserEntry, nbytes: int) -> None:
        """``entry`` grew by ``nbytes`` (a memoised result); counts only while it is cached."""
        with self._lock:
            nbytes += entry.unaccounted
            entry.unaccounted = 0
            entry.nbytes += nbytes
            if self._cache.get(user) is entry:
                self._cache_bytes += nbytes
                if self._cache_bytes > self.settings.cache_max_bytes:
                    self._evict()
                else:
                    self._report_cache()

    def is_known(self, snap: ModelSnapshot, user: str, entry: UserEntry | None) -> bool:
        if snap.user_map.get(user) is None:
            return False
        if entry is not None:
            return not entry.tombstoned
        return self._digest(user) not in self._deleted

    def check_event_types(self, rows: Sequence[dict]) -> None:
        for i, r in enumerate(rows):
            problem = self.event_types.check(r.get("event_type"))
            if problem:
                raise BadRequest(problem if len(rows) == 1 else f"events[{i}]: {problem}")

    def ingest(self, rows: Sequence[dict]) -> dict[str, Any]:
        """Commit events, then update cached sequences; returns the acknowledgement."""
        self.check_event_types(rows)
        snap = self.snap
        result = self.store.insert_events(rows)  # committed when this returns; no lock held
        by_user: dict[str, list[StoredEvent]] = {}
        for e in result.stored:
            by_user.setdefault(e.user, []).append(e)
        now = time.time()
        with self._lock:
            self._has_events.update(by_user)  # publish before touching the cache
            for e in result.stored:
                self._applied[e.id] = now
            for user, new in by_user.items():
                slot = self._loading.get(user)
                if slot is not None:
                    slot[1] = True
                old = self._cache.get(user)
                if old is not None:
                    self._put(user, old.merged(new, self.event_types))
        get_item, get_user = snap.item_map.get, snap.user_map.get
        stored = result.stored
        unknown_items = sum(1 for e in stored if get_item(e.item) is None)
        unknown_users = sum(1 for e in stored if get_user(e.user) is None
                            or self._digest(e.user) in self._deleted)
        m = self.metrics
        m.events.inc(len(stored))
        if unknown_items:
            m.unknown_item_events.inc(unknown_items)
        if unknown_users:
            m.unknown_user_events.inc(unknown_users)
        return {"stored": len(stored), "duplicates": result.duplicates, "unknown_items": unknown_items,
                "unknown_users": unknown_users, "model_version": snap.version}

    def delete_user(self, user: str) -> int | None:
        """Remove the user's events and cached state; None if the user was unknown."""
        snap = self.snap
        digest = self._digest(user)
        in_model = snap.user_map.get(user) is not None and digest not in self._deleted
        has_events = bool(self.store.user_events(user))
        if not in_model and not has_events:
            return None
        n = self.store.delete_user(user)  # no lock held: reads go on meanwhile
        with self._lock:
            self._deleted.add(digest)  # publish before touching the cache
            self._has_events.discard(user)
            self._invalidate(user)  # drops the cached sequence and recommendations
        dense = snap.user_map.get(user)
        if dense is not None:
            self._deleted_users.setdefault(snap.version, set()).add(dense)
        write_erasures(snap.path, self._secret, {digest})
        self.metrics.deleted_users.inc()
        log.info("deleted a user and %d events", n)  # the id itself is not logged
        return n

    # ---- recommendations -----------------------------------------------------
    def recommend_history(self, snap: ModelSnapshot, history: np.ndarray, *, k: int,
                          exclude_seen: bool, exclude: Sequence[str], categories: Sequence[str],
                          exclude_categories: Sequence[str], explain: bool, offset: int = 0,
                          never: np.ndarray | None = None) -> dict[str, Any]:
        """Recommendation payload for a dense history (model) or, if it is empty, the popularity fallback.

        Every model scores from the history alone, so a user the bundle has never
        seen is scored from their stored events like an anonymous session.
        Items ``offset .. offset + k`` of the ranking; ``never`` (dense ids) and every
        hidden, deleted or expired item are left out of every path, fallback included.
        """
        allowed, excl = self._exclusions(snap, exclude, categories, exclude_categories, never)
        use_model = len(history) > 0
        seen = history if exclude_seen else None
        top = k + offset
        if use_model and snap.index is not None:  # large catalogue: FAISS instead of scoring every item
            ids, vals = snap.retrieve(history, top, seen, excl, allowed)
        else:
            if use_model:
                scores = snap.score(history)
            else:
                scores = snap.popularity_scores()
                self.metrics.fallbacks.inc()
            ids, vals = snap.rank(scores, top, seen, excl, allowed)
        ids, vals = ids[offset:], vals[offset:]
        items = self._items_payload(snap, ids, vals)
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
                    because.append({"item": raw, "position": pos, "weight": w,
                                    "name": self.catalogue.describe(snap, raw)["name"]})
                it["explanation"] = {"method": method, "because": because}
        return {"source": "model" if use_model else "popularity-fallback",
                "model_version": snap.version, "items": items}

    def similar_items(self, snap: ModelSnapshot, item: int, *, k: int, offset: int = 0,
                      exclude: Sequence[str] = (), categories: Sequence[str] = (),
                      exclude_categories: Sequence[str] = ()) -> dict[str, Any]:
        """Items ``offset .. offset + k`` most similar to dense ``item`` under the model's similarity."""
        allowed, excl = self._exclusions(snap, exclude, categories, exclude_categories, None)
        ids, vals = snap.rank(snap.similar_scores(item), k + offset, np.array([item], dtype=np.int64),
                              excl, allowed)
        return {"source": "model", "model_version": snap.version,
                "items": self._items_payload(snap, ids[offset:], vals[offset:])}

    def _exclusions(self, snap: ModelSnapshot, exclude: Sequence[str], categories: Sequence[str],
                    exclude_categories: Sequence[str], never: np.ndarray | None
                    ) -> tuple[Any, np.ndarray | None]:
        """``(allowed mask, excluded dense ids)``: filters, explicit excludes, hidden/deleted/expired items."""
        allowed = self.catalogue.allowed_mask(snap, categories, exclude_categories)
        parts = [x for x in (snap.encode_items(exclude)[0] if exclude else None, never,
                             self.catalogue.banned(snap)) if x is not None and len(x)]
        return allowed, (np.concatenate(parts) if parts else None)

    def _items_payload(self, snap: ModelSnapshot, ids: np.ndarray, vals: np.ndarray) -> list[dict[str, Any]]:
        items = []
        for raw, sc in zip(snap.raw_items(ids), vals.tolist()):
            d = self.catalogue.describe(snap, raw)
            items.append({"item": raw, "score": sc, "name": d["name"], "category": d["category"]})
        return items

    def recommend_user(self, snap: ModelSnapshot, user: str, entry: UserEntry, q) -> dict[str, Any]:
        key = (snap.version, self.catalogue.state_key(), q.k, q.offset, q.exclude_seen,
               tuple(q.exclude), tuple(q.categories), tuple(q.exclude_categories), q.explain)
        cap = self.settings.rec_cache_per_user
        if cap:
            hit = entry.recs.get(key)
            if hit is not None:
                return hit
        # a user new to the bundle (or deleted and back) is scored from their stored events;
        # one without any event of a known item gets popular items, labelled "popularity-fallback"
        history = entry.sequence(snap, user)
        out = self.recommend_history(
            snap, history, k=q.k, exclude_seen=q.exclude_seen, exclude=q.exclude,
            categories=q.categories, exclude_categories=q.exclude_categories, explain=q.explain,
            offset=q.offset, never=entry.never(snap, user, q.exclude_seen))
        out = {"user": user, **out}
        grown = 0
        if cap:
            recs = entry.recs
            recs[key] = out
            grown = _result_bytes(out)
            while len(recs) > cap:
                try:
                    grown -= _result_bytes(recs.popitem(last=False)[1])
                except KeyError:
                    break
        if grown or entry.unaccounted:
            self._account(user, entry, grown)
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


def _result_bytes(out: dict) -> int:
    items = out["items"]
    because = sum(len(it["explanation"]["because"]) for it in items if "explanation" in it)
    return _RESULT_BYTES + _RESULT_ITEM_BYTES * len(items) + _BECAUSE_BYTES * because


def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path / "config.json")
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


__all__ = ["RecService", "UserEntry", "BadRequest"]
