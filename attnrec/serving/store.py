"""Durable event store over one SQLAlchemy URL (SQLite by default, PostgreSQL in production).

An ingest is acknowledged only after its transaction committed. SQLite runs in
WAL mode with ``synchronous=FULL`` so a commit survives a crash of the process
and of the machine.

Deleting a user removes their events. Fit-time history inside a model bundle
cannot be rewritten by the service, so the deletion also records a SHA-256
digest of the user id (never the id itself) that hides that history until a
retrained bundle no longer contains the user.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

metadata = MetaData()

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", String(256), nullable=False, index=True),
    Column("item_id", String(256), nullable=False),
    Column("event_type", String(64)),
    Column("ts", Float(53)),  # client time, epoch seconds (optional)
    Column("received_at", Float(53), nullable=False),
)

deleted_users = Table(
    "deleted_users",
    metadata,
    Column("user_hash", String(64), primary_key=True),
)

# one row: a random id naming this store, so a bundle's "events up to id N" is only
# applied against the store those ids came from (a fresh database restarts ids)
store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)


def user_digest(user: str) -> str:
    return hashlib.sha256(b"attnrec-deleted-user\x00" + user.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredEvent:
    id: int
    user: str
    item: str
    event_type: str | None
    timestamp: float | None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class EventStore:
    def __init__(self, url: str, pool_size: int = 8):
        self.url = url
        u = make_url(url)
        self.dialect = u.get_backend_name()
        if self.dialect == "sqlite":
            if u.database in (None, "", ":memory:"):
                raise ValueError("the event store needs a file database; in-memory SQLite is not durable")
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 30},
                pool_size=pool_size, max_overflow=pool_size,
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                                        pool_pre_ping=True)
        # SQLite has one writer at a time; queueing here beats busy-waiting on its lock
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        metadata.create_all(self.engine)
        log.info("event store ready (%s)", u.render_as_string(hide_password=True))

    def _writing(self):
        return self._write_lock if self._write_lock is not None else _NullLock()

    def close(self) -> None:
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness reports any failure as not ready
            log.exception("database ping failed")
            return False

    def add_events(self, rows: Sequence[dict]) -> int:
        """Insert ``rows`` (user_id, item_id, event_type, ts) in one committed transaction."""
        if not rows:
            return 0
        now = time.time()
        values = [{**r, "received_at": now} for r in rows]
        with self._writing(), self.engine.begin() as conn:
            conn.execute(insert(events), values)
        return len(values)

    def user_items(self, user: str) -> list[str]:
        """The user's stored item ids in arrival order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events.c.item_id).where(events.c.user_id == user).order_by(events.c.id)
            )
            return [r[0] for r in rows]

    def user_events(self, user: str) -> list[StoredEvent]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events.c.id, events.c.user_id, events.c.item_id, events.c.event_type, events.c.ts)
                .where(events.c.user_id == user)
                .order_by(events.c.id)
            )
            return [StoredEvent(*r) for r in rows]

    def delete_user(self, user: str) -> int:
        """Delete the user's events and record the id digest; returns events removed."""
        digest = user_digest(user)
        with self._writing(), self.engine.begin() as conn:
            n = conn.execute(delete(events).where(events.c.user_id == user)).rowcount
            exists = conn.execute(
                select(deleted_users.c.user_hash).where(deleted_users.c.user_hash == digest)
            ).first()
            if exists is None:
                conn.execute(insert(deleted_users), [{"user_hash": digest}])
        return int(n or 0)

    def users_with_events(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(events.c.user_id).distinct())}

    def deleted_digests(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(deleted_users.c.user_hash))}

    def count_events(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(events)).scalar_one())

    def store_id(self) -> str:
        """This store's random identity (created on first use)."""
        import uuid

        q = select(store_meta.c.value).where(store_meta.c.key == "store_id")
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        if row is not None:
            return row[0]
        with self._writing(), self.engine.begin() as conn:
            row = conn.execute(q).first()
            if row is None:
                conn.execute(insert(store_meta), [{"key": "store_id", "value": uuid.uuid4().hex}])
                row = conn.execute(q).first()
        return row[0]

    def iter_events(self, batch: int = 10_000) -> Iterable[StoredEvent]:
        """Every stored event in id order (for exporting to a retraining job)."""
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(events.c.id, events.c.user_id, events.c.item_id, events.c.event_type, events.c.ts)
                    .where(events.c.id > last)
                    .order_by(events.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for r in rows:
                yield StoredEvent(*r)
            last = rows[-1][0]


class _NullLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
