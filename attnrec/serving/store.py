"""Durable event store over one SQLAlchemy URL (SQLite by default, PostgreSQL in production).

An ingest is acknowledged only after its transaction committed. SQLite runs in
WAL mode with ``synchronous=FULL`` (a commit survives a crash of the process
and of the machine) and ``secure_delete`` (deleted rows are overwritten, and a
checkpoint after each deletion moves them out of the WAL file too).

Tables:

* ``events``: one row per event. ``id`` grows monotonically with every insert
  (use it as "the last event included in a bundle"); ``ts`` is the event time
  (the client's timestamp, or the arrival time when it sent none), and a user's
  sequence is ordered by ``(ts, id)``: event time, ties by arrival. ``event_id``
  is the client's optional idempotency key: a second insert with the same key
  is a no-op.
* ``tombstones``: users deleted through the API, as HMAC-SHA256 of the id keyed
  with a server secret (never the id, and not an unkeyed hash: without the
  secret a list of candidate ids reveals nothing).
* ``catalogue``: item state the service manages (hidden, deleted, categories,
  labels, name, description, expiry), shared by every worker.

Every database call is bounded by ``timeout_s``: a stalled call raises
:class:`StoreUnavailable` (the service answers 503) instead of hanging.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(256), nullable=False, index=True),
    Column("item_id", String(256), nullable=False),
    Column("event_type", String(64)),
    Column("ts", Float(53)),  # event time, epoch seconds: client time or arrival time
    Column("received_at", Float(53), nullable=False, index=True),
    Column("event_id", String(256), unique=True),  # client idempotency key (optional)
    Index("ix_events_ts_id", "ts", "id"),  # export in event-time order
)

tombstones = Table(
    "tombstones",
    metadata,
    Column("user_hmac", String(64), primary_key=True),
    Column("deleted_at", Float(53), nullable=False, index=True),
)

# one row: a random id naming this store, so a bundle's "events up to id N" is only
# applied against the store those ids came from (a fresh database restarts ids)
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

catalogue = Table(
    "catalogue",
    metadata,
    Column("item_id", String(256), primary_key=True),
    Column("hidden", Boolean, nullable=False, default=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("name", Text),
    Column("description", Text),
    Column("categories", Text),  # JSON list of strings
    Column("labels", Text),  # JSON list of strings
    Column("expires_at", Float(53)),  # epoch seconds; hidden from then on
    Column("updated_at", Float(53), nullable=False, index=True),
)

_CATALOGUE_FIELDS = ("hidden", "deleted", "name", "description", "categories", "labels", "expires_at")
_EVENT_COLUMNS = (events.c.id, events.c.user_id, events.c.item_id, events.c.event_type,
                  events.c.ts, events.c.received_at, events.c.event_id)


class StoreUnavailable(RuntimeError):
    """The database did not answer within the configured timeout (locked, down, overloaded)."""


@dataclass(frozen=True)
class StoredEvent:
    id: int  # monotonically increasing row id
    user: str
    item: str
    event_type: str | None
    timestamp: float  # event time (client time, else arrival time)
    received_at: float = 0.0
    event_id: str | None = None


@dataclass(frozen=True)
class InsertResult:
    stored: list[StoredEvent]  # rows actually inserted, in request order
    duplicates: int  # rows skipped because their event_id was already stored


@dataclass(frozen=True)
class ItemState:
    item: str
    hidden: bool = False
    deleted: bool = False
    name: str | None = None
    description: str | None = None
    categories: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    expires_at: float | None = None
    updated_at: float = 0.0

    def hidden_at(self, now: float) -> bool:
        """Never recommended: hidden, deleted or expired."""
        return self.hidden or self.deleted or (self.expires_at is not None and self.expires_at <= now)


@dataclass
class _Health:
    last_write_error: float | None = None
    detail: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def user_hmac(secret: bytes, user: str) -> str:
    """Tombstone key of ``user``: HMAC-SHA256 with the server secret, hex."""
    return hmac.new(secret, b"attnrec-user\x00" + user.encode("utf-8"), hashlib.sha256).hexdigest()


def _sqlite_pragmas(timeout_ms: int):
    def apply(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        cur.close()

    return apply


class EventStore:
    """``EventStore(url, secret=..., timeout_s=2.0)``; see the module docstring."""

    def __init__(self, url: str, pool_size: int = 8, *, secret: bytes = b"attnrec-test-secret",
                 timeout_s: float = 2.0):
        if not secret:
            raise ValueError("the event store needs a non-empty secret for its tombstones")
        self.url = url
        self.secret = secret
        self.timeout_s = float(timeout_s)
        u = make_url(url)
        self.dialect = u.get_backend_name()
        ms = max(1, int(self.timeout_s * 1000))
        if self.dialect == "sqlite":
            if u.database in (None, "", ":memory:"):
                raise ValueError("the event store needs a file database; in-memory SQLite is not durable")
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            self.sqlite_path: str | None = u.database
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": self.timeout_s},
                pool_size=pool_size, max_overflow=pool_size, pool_timeout=self.timeout_s,
            )
            event.listen(self.engine, "connect", _sqlite_pragmas(ms))
        else:
            self.sqlite_path = None
            connect_args: dict[str, Any] = {}
            if self.dialect == "postgresql":
                connect_args = {"options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
                                "connect_timeout": max(1, int(round(self.timeout_s)))}
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                        pool_pre_ping=True, pool_timeout=self.timeout_s,
                                        connect_args=connect_args)
        # SQLite has one writer at a time; queueing here beats busy-waiting on its lock
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self._health = _Health()
        with self._guard("create tables"):
            metadata.create_all(self.engine)
            self._migrate()
        log.info("event store ready (%s)", u.render_as_string(hide_password=True))

    # ---- plumbing ------------------------------------------------------------
    def _migrate(self) -> None:
        """Add the columns newer versions need to an events table created by an older one."""
        cols = {c["name"] for c in inspect(self.engine).get_columns("events")}
        with self.engine.begin() as conn:
            if "event_id" not in cols:
                conn.execute(text("ALTER TABLE events ADD COLUMN event_id VARCHAR(256)"))
                conn.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS ix_events_event_id ON events (event_id)"))
                log.info("event store: added the event_id column")
            # older versions left ts empty without a client time: the arrival time is the event time
            conn.execute(text("UPDATE events SET ts = received_at WHERE ts IS NULL"))
            conn.execute(text("CREATE INDEX IF NOT EXISTS ix_events_ts_id ON events (ts, id)"))
            conn.execute(text("CREATE INDEX IF NOT EXISTS ix_events_received_at ON events (received_at)"))
            if "deleted_users" in inspect(self.engine).get_table_names():
                n = conn.execute(text("SELECT count(*) FROM deleted_users")).scalar_one()
                if n:
                    log.warning("the old deleted_users table holds %d unkeyed digests; they cannot be "
                                "re-keyed, so re-issue those deletions (DELETE /users/{id})", n)

    class _Guard:
        def __init__(self, store: "EventStore", what: str, write: bool):
            self.store, self.what, self.write, self.locked = store, what, write, False

        def __enter__(self):
            lock = self.store._write_lock if self.write else None
            if lock is not None:
                if not lock.acquire(timeout=self.store.timeout_s):
                    self.store._mark(False, f"{self.what}: waited {self.store.timeout_s:g} s for the write lock")
                    raise StoreUnavailable(f"the database is busy ({self.what} timed out)")
                self.locked = True
            return self

        def __exit__(self, exc_type, exc, tb):
            if self.locked:
                self.store._write_lock.release()
            if exc_type is None:
                if self.write:
                    self.store._mark(True)
                return False
            if isinstance(exc, (OperationalError, PoolTimeout)) or (
                    isinstance(exc, DBAPIError) and exc.connection_invalidated):
                reason = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
                if self.write:
                    self.store._mark(False, f"{self.what}: {reason}")
                log.warning("database call failed (%s): %s", self.what, reason)
                raise StoreUnavailable(f"the database did not answer ({self.what}): {reason}") from None
            return False

    def _guard(self, what: str, write: bool = False) -> "EventStore._Guard":
        return EventStore._Guard(self, what, write)

    def _mark(self, ok: bool, detail: str | None = None) -> None:
        h = self._health
        with h.lock:
            if ok:
                h.last_write_error, h.detail = None, None
            else:
                h.last_write_error, h.detail = time.time(), detail

    def close(self) -> None:
        self.engine.dispose()

    def digest(self, user: str) -> str:
        return user_hmac(self.secret, user)

    # ---- health ----------------------------------------------------------------
    def ping(self) -> bool:
        """True when the database answers reads *and* would accept a write now."""
        return self.health()[0]

    def health(self) -> tuple[bool, str | None]:
        try:
            with self._guard("health check"):
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            self._probe_write()
        except StoreUnavailable as e:
            return False, str(e)
        except Exception as e:  # noqa: BLE001 - readiness reports any failure as not ready
            log.exception("database health check failed")
            return False, type(e).__name__
        h = self._health
        if h.last_write_error is not None:
            return False, h.detail
        return True, None

    def _probe_write(self) -> None:
        """Take the write lock for an instant (and give it back): a held lock shows up here."""
        probe_s = min(0.5, self.timeout_s)
        if self.sqlite_path is not None:
            try:
                conn = sqlite3.connect(self.sqlite_path, timeout=probe_s)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.rollback()
                finally:
                    conn.close()
            except sqlite3.OperationalError as e:
                self._mark(False, f"write probe: {e}")
                raise StoreUnavailable(f"the database refuses writes: {e}") from None
            self._mark(True)
            return
        if self.dialect == "postgresql":
            try:
                with self.engine.connect() as conn:
                    conn.execute(text(f"SET LOCAL lock_timeout = {int(probe_s * 1000)}"))
                    conn.execute(text("LOCK TABLE events IN ROW EXCLUSIVE MODE"))
                    conn.rollback()
            except (OperationalError, DBAPIError) as e:
                reason = str(getattr(e, "orig", e)).splitlines()[0][:200]
                self._mark(False, f"write probe: {reason}")
                raise StoreUnavailable(f"the database refuses writes: {reason}") from None
            self._mark(True)

    # ---- events ------------------------------------------------------------------
    def insert_events(self, rows: Sequence[dict]) -> InsertResult:
        """Insert ``rows`` (user_id, item_id, event_type, ts, event_id) in one committed transaction.

        ``ts`` None means "now" (arrival time). A row whose ``event_id`` is already
        stored, or repeats an earlier row of the same batch, is skipped and counted
        in ``duplicates``.
        """
        if not rows:
            return InsertResult([], 0)
        now = time.time()
        seen: set[str] = set()
        values, dup_in_batch = [], 0
        for r in rows:
            eid = r.get("event_id")
            if eid is not None:
                if eid in seen:
                    dup_in_batch += 1
                    continue
                seen.add(eid)
            ts = r.get("ts")
            values.append({"user_id": r["user_id"], "item_id": r["item_id"],
                           "event_type": r.get("event_type"), "ts": now if ts is None else float(ts),
                           "received_at": now, "event_id": eid})
        stmt = self._insert(events).returning(
            events.c.id, events.c.user_id, events.c.item_id, events.c.event_type, events.c.ts,
            events.c.received_at, events.c.event_id, sort_by_parameter_order=True)
        if seen:
            stmt = stmt.on_conflict_do_nothing(index_elements=["event_id"])
        with self._guard("insert events", write=True), self.engine.begin() as conn:
            stored = [StoredEvent(*r) for r in conn.execute(stmt, values)]
        return InsertResult(stored, dup_in_batch + len(values) - len(stored))

    def _insert(self, table: Table):
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def add_events(self, rows: Sequence[dict]) -> int:
        """Like :meth:`insert_events`; returns the number of rows inserted."""
        return len(self.insert_events(rows).stored)

    def user_events(self, user: str) -> list[StoredEvent]:
        """The user's stored events in event-time order (ties: arrival order)."""
        with self._guard("read a user"), self.engine.connect() as conn:
            rows = conn.execute(
                select(*_EVENT_COLUMNS).where(events.c.user_id == user)
                .order_by(_EVENT_COLUMNS[4], events.c.id)
            )
            return [StoredEvent(*r) for r in rows]

    def user_items(self, user: str) -> list[str]:
        """The user's stored item ids in event-time order (every event type)."""
        return [e.item for e in self.user_events(user)]

    def users_with_events(self) -> set[str]:
        with self._guard("list users"), self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(events.c.user_id).distinct())}

    def count_events(self) -> int:
        with self._guard("count events"), self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    def store_id(self) -> str:
        """This store's random identity (created on first use)."""
        import uuid

        q = select(store_meta.c.value).where(store_meta.c.key == "store_id")
        with self._guard("store id"), self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is not None:
            return row[0]
        with self._guard("store id", write=True), self.engine.begin() as conn:
            conn.execute(self._insert(store_meta).on_conflict_do_nothing(index_elements=["key"]),
                         [{"key": "store_id", "value": uuid.uuid4().hex}])
            return conn.execute(q).scalar_one()

    def max_event_id(self) -> int:
        """The largest event row id so far (0 when empty)."""
        with self._guard("max event id"), self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.max(events.c.id), 0))).scalar_one())

    def iter_events(self, after_id: int | None = None, upto_id: int | None = None,
                    batch: int = 10_000) -> Iterator[StoredEvent]:
        """Stored events with ``after_id < id <= upto_id`` in event-time order (ties: arrival).

        ``upto_id`` defaults to :meth:`max_event_id` at the call, so events that
        arrive while iterating are left for the next export (record ``upto_id``
        as the last event included). Deleted users' events are gone from the
        table, so none are yielded.
        """
        lo = 0 if after_id is None else int(after_id)
        hi = self.max_event_id() if upto_id is None else int(upto_id)
        ts_col = _EVENT_COLUMNS[4]
        last: tuple[float, int] | None = None
        while True:
            cond = and_(events.c.id > lo, events.c.id <= hi)
            if last is not None:
                cond = and_(cond, or_(ts_col > last[0], and_(ts_col == last[0], events.c.id > last[1])))
            with self._guard("export events"), self.engine.connect() as conn:
                rows = conn.execute(
                    select(*_EVENT_COLUMNS).where(cond).order_by(ts_col, events.c.id).limit(batch)
                ).all()
            if not rows:
                return
            for r in rows:
                yield StoredEvent(*r)
            last = (rows[-1][4], rows[-1][0])

    def events_since(self, received_after: float) -> list[tuple[int, str]]:
        """``(id, user)`` of events that arrived after ``received_after`` (cross-worker sync)."""
        with self._guard("poll events"), self.engine.connect() as conn:
            return [(int(i), u) for i, u in conn.execute(
                select(events.c.id, events.c.user_id).where(events.c.received_at > received_after))]

    # ---- users ---------------------------------------------------------------------
    def delete_user(self, user: str) -> int:
        """Delete the user's events and record the tombstone; returns events removed."""
        digest = self.digest(user)
        with self._guard("delete a user", write=True), self.engine.begin() as conn:
            n = conn.execute(delete(events).where(events.c.user_id == user)).rowcount
            conn.execute(self._insert(tombstones).on_conflict_do_nothing(index_elements=["user_hmac"]),
                         [{"user_hmac": digest, "deleted_at": time.time()}])
        self.checkpoint()
        return int(n or 0)

    def checkpoint(self) -> None:
        """Move committed pages out of the SQLite WAL (where deleted rows would stay readable)."""
        if self.sqlite_path is None:
            return
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except OperationalError as e:  # a long reader: the next checkpoint catches up
            log.warning("WAL checkpoint after a deletion did not complete: %s", e)

    def is_deleted(self, user: str) -> bool:
        """Whether ``user`` was deleted through the API (checks the keyed tombstone)."""
        digest = self.digest(user)
        with self._guard("read tombstones"), self.engine.connect() as conn:
            return conn.execute(select(tombstones.c.user_hmac)
                                .where(tombstones.c.user_hmac == digest)).first() is not None

    def deleted_digests(self, since: float | None = None) -> set[str]:
        """Every tombstone (HMAC hex), or those recorded after ``since``."""
        q = select(tombstones.c.user_hmac)
        if since is not None:
            q = q.where(tombstones.c.deleted_at > since)
        with self._guard("read tombstones"), self.engine.connect() as conn:
            return {r[0] for r in conn.execute(q)}

    def add_tombstones(self, digests: Iterable[str]) -> int:
        """Record tombstones known from elsewhere (the bundle's erasure list); returns new ones."""
        new = set(digests) - self.deleted_digests()
        if new:
            now = time.time()
            with self._guard("write tombstones", write=True), self.engine.begin() as conn:
                conn.execute(self._insert(tombstones).on_conflict_do_nothing(index_elements=["user_hmac"]),
                             [{"user_hmac": d, "deleted_at": now} for d in sorted(new)])
        return len(new)

    # ---- catalogue -------------------------------------------------------------------
    def upsert_item(self, item: str, **changes: Any) -> ItemState:
        """Create or update an item's catalogue state; fields not given keep their value."""
        bad = set(changes) - set(_CATALOGUE_FIELDS)
        if bad:
            raise ValueError(f"unknown catalogue fields: {sorted(bad)}")
        values = {k: (json.dumps(list(v)) if k in ("categories", "labels") and v is not None else v)
                  for k, v in changes.items()}
        values["updated_at"] = time.time()
        with self._guard("update the catalogue", write=True), self.engine.begin() as conn:
            stmt = self._insert(catalogue).values(
                item_id=item, hidden=values.get("hidden", False) or False,
                deleted=values.get("deleted", False) or False,
                **{k: v for k, v in values.items() if k not in ("hidden", "deleted")})
            update = {k: stmt.excluded[k] for k in values}
            conn.execute(stmt.on_conflict_do_update(index_elements=["item_id"], set_=update))
            row = conn.execute(select(catalogue).where(catalogue.c.item_id == item)).one()
        return _item_state(row)

    def get_item(self, item: str) -> ItemState | None:
        with self._guard("read the catalogue"), self.engine.connect() as conn:
            row = conn.execute(select(catalogue).where(catalogue.c.item_id == item)).first()
        return None if row is None else _item_state(row)

    def items(self, updated_after: float | None = None) -> list[ItemState]:
        """Every catalogue row, or those changed after ``updated_after``."""
        q = select(catalogue)
        if updated_after is not None:
            q = q.where(catalogue.c.updated_at > updated_after)
        with self._guard("read the catalogue"), self.engine.connect() as conn:
            return [_item_state(r) for r in conn.execute(q)]

    def deleted_items(self) -> set[str]:
        """Items deleted through the API (never recommended, gone from every listing)."""
        with self._guard("read the catalogue"), self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(catalogue.c.item_id).where(catalogue.c.deleted))}

    def hidden_items(self, now: float | None = None) -> set[str]:
        """Items never to recommend at ``now``: hidden, deleted or expired."""
        now = time.time() if now is None else now
        return {s.item for s in self.items() if s.hidden_at(now)}


def _item_state(row) -> ItemState:
    m = row._mapping
    return ItemState(
        item=m["item_id"], hidden=bool(m["hidden"]), deleted=bool(m["deleted"]), name=m["name"],
        description=m["description"],
        categories=tuple(json.loads(m["categories"])) if m["categories"] else (),
        labels=tuple(json.loads(m["labels"])) if m["labels"] else (),
        expires_at=m["expires_at"], updated_at=float(m["updated_at"]))
