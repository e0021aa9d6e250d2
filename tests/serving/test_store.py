"""The event store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from attnrec.serving.store import EventStore, user_digest


def test_store_roundtrip_and_delete(db_url):
    store = EventStore(db_url)
    try:
        assert store.ping()
        rows = [{"user_id": f"u{i % 3}", "item_id": f"i{i}", "event_type": None, "ts": None} for i in range(10)]
        assert store.add_events(rows) == 10
        assert store.user_items("u1") == ["i1", "i4", "i7"]  # arrival order
        assert store.count_events() == 10
        assert [e.item for e in store.iter_events(batch=4)] == [f"i{i}" for i in range(10)]
        assert store.delete_user("u1") == 3
        assert store.user_items("u1") == [] and store.count_events() == 7
        assert store.deleted_digests() == {user_digest("u1")}
        assert store.delete_user("u1") == 0 and len(store.deleted_digests()) == 1
    finally:
        store.close()


def test_sqlite_is_durable_wal(sqlite_url):
    store = EventStore(sqlite_url)
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 2  # FULL
    store.close()


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ValueError, match="not durable"):
        EventStore("sqlite:///:memory:")
