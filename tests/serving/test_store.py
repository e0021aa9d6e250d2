"""The event store on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlalchemy as sa
import pytest

from attnrec.serving.store import EventStore


def test_store_roundtrip_and_delete(db_url):
    store = EventStore(db_url)
    try:
        assert store.ping()
        rows = [{"user_id": f"u{i % 3}", "item_id": f"i{i}", "event_type": None, "ts": None} for i in range(10)]
        assert store.add_events(rows) == 10
        assert store.user_items("u1") == ["i1", "i4", "i7"]  # arrival order (no client times)
        assert store.count_events() == 10
        assert [e.item for e in store.iter_events(batch=4)] == [f"i{i}" for i in range(10)]
        assert store.delete_user("u1") == 3
        assert store.user_items("u1") == [] and store.count_events() == 7
        assert store.deleted_digests() == {store.digest("u1")}
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


def test_sequence_is_event_time_ordered_and_event_id_idempotent(db_url):
    store = EventStore(db_url)
    try:
        rows = [{"user_id": "u", "item_id": "late", "ts": 1_700_000_300.0, "event_id": "e1"},
                {"user_id": "u", "item_id": "early", "ts": 1_700_000_100.0, "event_id": "e2"},
                {"user_id": "u", "item_id": "tie-a", "ts": 1_700_000_200.0},
                {"user_id": "u", "item_id": "tie-b", "ts": 1_700_000_200.0},
                {"user_id": "u", "item_id": "again", "ts": 1_700_000_400.0, "event_id": "e2"}]
        res = store.insert_events(rows)
        assert [e.item for e in res.stored] == ["late", "early", "tie-a", "tie-b"]
        assert res.duplicates == 1  # e2 twice in one batch
        # event time first, arrival breaks the tie
        assert store.user_items("u") == ["early", "tie-a", "tie-b", "late"]
        retry = store.insert_events([{"user_id": "u", "item_id": "late", "ts": 1_700_000_300.0,
                                      "event_id": "e1"}])
        assert retry.stored == [] and retry.duplicates == 1
        assert store.count_events() == 4
        ids = [e.id for e in res.stored]
        assert ids == sorted(ids) and store.max_event_id() == ids[-1]
        # export: event-time order, only ids after the watermark, none past upto
        assert [e.item for e in store.iter_events(batch=1)] == ["early", "tie-a", "tie-b", "late"]
        assert [e.item for e in store.iter_events(after_id=ids[1], batch=1)] == ["tie-a", "tie-b"]
        assert [e.item for e in store.iter_events(after_id=ids[0], upto_id=ids[2])] == ["early", "tie-a"]
    finally:
        store.close()


def test_tombstones_are_keyed_with_the_secret(db_url):
    import hashlib

    store = EventStore(db_url, secret=b"server-secret-1")
    try:
        store.add_events([{"user_id": "tenant/42", "item_id": "i1"}])
        assert store.delete_user("tenant/42") == 1
        digests = store.deleted_digests()
        assert store.is_deleted("tenant/42") and not store.is_deleted("tenant/43")
        # an unkeyed hash of the id (what someone with a list of ids could compute) is not there
        assert hashlib.sha256(b"tenant/42").hexdigest() not in digests
        assert len(digests) == 1 and EventStore(db_url, secret=b"other").digest("tenant/42") not in digests
        assert store.add_tombstones(digests | {"ab" * 32}) == 1
    finally:
        store.close()


def test_catalogue_state(db_url):
    store = EventStore(db_url)
    try:
        s = store.upsert_item("i1", hidden=True, categories=["shoes"], labels=["red", "sale"])
        assert s.hidden and not s.deleted and s.categories == ("shoes",) and s.labels == ("red", "sale")
        s = store.upsert_item("i1", name="Red shoe")  # other fields keep their value
        assert s.hidden and s.name == "Red shoe" and s.categories == ("shoes",)
        store.upsert_item("i2", deleted=True)
        store.upsert_item("i3", expires_at=1.0)
        store.upsert_item("i4", hidden=False)
        assert store.deleted_items() == {"i2"}
        assert store.hidden_items() == {"i1", "i2", "i3"}
        assert store.get_item("nope") is None
        with pytest.raises(ValueError, match="unknown catalogue fields"):
            store.upsert_item("i1", colour="red")
    finally:
        store.close()


def test_locked_sqlite_write_fails_fast(sqlite_url, tmp_path):
    import sqlite3
    import time

    from attnrec.serving.store import StoreUnavailable

    store = EventStore(sqlite_url, timeout_s=0.5)
    other = sqlite3.connect(str(tmp_path / "events.db"))
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        assert store.user_items("u") == []  # reads do not wait behind it
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database"):
            store.add_events([{"user_id": "u", "item_id": "i"}])
        assert time.monotonic() - t0 < 1.5
        ok, detail = store.health()
        assert not ok and "lock" in detail
    finally:
        other.rollback()
        other.close()
    assert store.health() == (True, None)
    assert store.add_events([{"user_id": "u", "item_id": "i"}]) == 1
    store.close()


def test_an_older_events_table_is_migrated(sqlite_url, tmp_path):
    import sqlite3

    conn = sqlite3.connect(str(tmp_path / "events.db"))
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id VARCHAR(256) NOT NULL, "
                 "item_id VARCHAR(256) NOT NULL, event_type VARCHAR(64), ts FLOAT, received_at FLOAT NOT NULL)")
    conn.executemany("INSERT INTO events (user_id, item_id, ts, received_at) VALUES (?, ?, ?, ?)",
                     [("u", "late", None, 1_700_000_300.0), ("u", "early", 1_700_000_100.0, 1_700_000_400.0)])
    conn.commit()
    conn.close()
    store = EventStore(sqlite_url)
    try:
        assert store.user_items("u") == ["early", "late"]  # no client time: arrival time
        assert store.insert_events([{"user_id": "u", "item_id": "x", "event_id": "e"}]).duplicates == 0
        assert store.insert_events([{"user_id": "u", "item_id": "x", "event_id": "e"}]).duplicates == 1
    finally:
        store.close()
