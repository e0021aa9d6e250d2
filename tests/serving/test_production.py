"""The service as a production engine (issue 13): feedback, catalogue, access, erasure, failure."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from attnrec.serving.schemas import Recommendations

from .conftest import API_KEY, AUTH, LiveServer, user_with_room

READ_KEY = "read-key-abcdef123456"
TYPES = {"purchase": 3, "view": 1, "dislike": -1, "impression": 0}


def rec_items(client, user, headers=None, **params) -> list[str]:
    r = client.get(f"/users/{quote(user, safe='')}/recommendations", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return [it.item for it in Recommendations.model_validate(r.json()).items]


# ---- typed feedback -------------------------------------------------------------------------
def test_negative_event_removes_the_item_from_that_users_list(make_client, ease_bundle, sqlite_url,
                                                             shop_data):
    c = make_client(ease_bundle, sqlite_url, event_types=TYPES)
    info = c.get("/admin/model").json()
    assert info["event_types"] == TYPES and info["trained_event_types"] is None
    user = shop_data.user_map.to_raw(3)
    top = rec_items(c, user, k=5)
    disliked, shown = top[0], top[1]
    r = c.post("/events", headers=AUTH, json={"user": user, "item": disliked, "event_type": "dislike"})
    assert r.status_code == 201
    after = rec_items(c, user, k=50)
    assert disliked not in after
    # even when the client asks to see history items again: a negative is never recommended
    assert disliked not in rec_items(c, user, k=100, exclude_seen="false")
    # exclude-only (weight 0): left out, and not part of the sequence the model reads
    before_seq = c.get(f"/users/{user}", params={"recent": 100}).json()["recent_items"]
    c.post("/events", headers=AUTH, json={"user": user, "item": shown, "event_type": "impression"})
    assert shown not in rec_items(c, user, k=50)
    assert c.get(f"/users/{user}", params={"recent": 100}).json()["recent_items"] == before_seq
    assert c.get(f"/users/{user}").json()["stored_events"] == 2
    # other users are not affected
    other = shop_data.user_map.to_raw(4)
    assert rec_items(c, other, k=5) == rec_items(make_client(ease_bundle, sqlite_url), other, k=5)


def test_positive_types_extend_the_sequence_and_unknown_types_are_refused(make_client, ease_bundle,
                                                                         sqlite_url, shop, shop_data):
    c = make_client(ease_bundle, sqlite_url, event_types=TYPES)
    user, product, accessory = user_with_room(shop_data, shop.rules, n=1, seed=11)[0]
    r = c.post("/events", headers=AUTH, json={"user": user, "item": product, "event_type": "purchase"})
    assert r.status_code == 201
    assert accessory in rec_items(c, user, k=10)
    r = c.post("/events", headers=AUTH, json={"user": user, "item": product, "event_type": "like"})
    assert r.status_code == 422
    assert r.json()["detail"] == ("unknown event_type 'like'; declared types: dislike, impression, "
                                  "purchase, view")
    r = c.post("/events/batch", headers=AUTH, json={"events": [
        {"user": user, "item": product, "event_type": "view"},
        {"user": user, "item": product, "event_type": "wish"}]})
    assert r.status_code == 422 and r.json()["detail"].startswith("events[1]: unknown event_type 'wish'")
    assert c.get(f"/users/{user}").json()["stored_events"] == 1  # nothing of the refused batch


def test_without_declared_types_every_event_is_positive(client, shop, shop_data):
    user, product, accessory = user_with_room(shop_data, shop.rules, n=1, seed=12)[0]
    r = client.post("/events", headers=AUTH, json={"user": user, "item": product, "event_type": "dislike"})
    assert r.status_code == 201
    assert accessory in rec_items(client, user, k=10)  # today's behaviour: a view like any other


def test_event_types_setting_is_validated(ease_bundle, monkeypatch):
    from attnrec.serving import Settings

    monkeypatch.setenv("ATTNREC_EVENT_TYPES", json.dumps(TYPES))
    assert Settings(model_path=ease_bundle).event_types == {k: float(v) for k, v in TYPES.items()}
    monkeypatch.setenv("ATTNREC_EVENT_TYPES", '{"view": "lots"}')
    with pytest.raises(ValueError, match="event_types"):
        Settings(model_path=ease_bundle)
    monkeypatch.delenv("ATTNREC_EVENT_TYPES")
    with pytest.raises(ValueError, match="must be a finite number"):
        Settings(model_path=ease_bundle, event_types={"view": True})


@pytest.mark.parametrize("bad, message", [
    (1e300, "outside the accepted window"),
    (5.5, "outside the accepted window"),
    (time.time() + 3 * 86400, "outside the accepted window"),
    (True, "epoch seconds (a JSON number) or an ISO-8601 string, got True"),
    ("1700000000", "is not ISO-8601"),
    ("yesterday", "is not ISO-8601"),
    ("2024-13-40T00:00:00Z", "is not a valid ISO-8601 time"),
    ([1], "got list"),
])
def test_timestamps_are_validated(client, bad, message):
    r = client.post("/events", headers=AUTH, json={"user": "u", "item": "i1", "timestamp": bad})
    assert r.status_code == 422
    assert message in r.json()["message"], r.json()


def test_sequence_is_ordered_by_event_time_and_iso_times_are_accepted(client):
    events = [{"user": "t", "item": "i3", "timestamp": "2024-05-01T12:00:00Z"},
              {"user": "t", "item": "i1", "timestamp": 1_600_000_000},
              {"user": "t", "item": "i2", "timestamp": "2023-01-01T00:00:00+02:00"},
              {"user": "t", "item": "i4"}]  # no time: arrival time (now), so last
    assert client.post("/events/batch", headers=AUTH, json={"events": events}).status_code == 201
    assert client.get("/users/t", params={"recent": 10}).json()["recent_items"] == ["i1", "i2", "i3", "i4"]
    # a later event dated earlier goes where its time says, in the cache too
    client.post("/events", headers=AUTH, json={"user": "t", "item": "i5", "timestamp": "2020-01-01"})
    assert client.get("/users/t", params={"recent": 10}).json()["recent_items"] == \
        ["i5", "i1", "i2", "i3", "i4"]


def test_event_id_makes_ingestion_idempotent(client):
    ev = {"user": "retry", "item": "i1", "event_id": "order-17-line-1"}
    first = client.post("/events", headers=AUTH, json=ev).json()
    again = client.post("/events", headers=AUTH, json=ev).json()  # the client retried
    assert (first["stored"], first["duplicates"]) == (1, 0)
    assert (again["stored"], again["duplicates"]) == (0, 1)
    batch = client.post("/events/batch", headers=AUTH, json={"events": [
        ev, {"user": "retry", "item": "i2", "event_id": "x"}, {"user": "retry", "item": "i2", "event_id": "x"}]})
    assert (batch.json()["stored"], batch.json()["duplicates"]) == (1, 2)
    assert client.get("/users/retry").json()["stored_events"] == 2


# ---- catalogue --------------------------------------------------------------------------------
def _every_listing(c, user: str, item_for_similar: str, headers=None) -> dict[str, list[str]]:
    """Item ids in every response that lists items (recommendations of every kind, search)."""
    h = headers or {}
    out = {}
    out["user"] = rec_items(c, user, k=100, headers=h)
    out["user-page-2"] = rec_items(c, user, k=100, offset=20, headers=h)
    out["fallback"] = rec_items(c, "someone-new", k=100, headers=h)
    out["with-seen"] = rec_items(c, user, k=100, exclude_seen="false", headers=h)
    r = c.post("/recommendations/session", headers=h, json={"items": [item_for_similar], "k": 100})
    out["session"] = [it["item"] for it in r.json()["items"]]
    r = c.post("/recommendations/session", headers=h, json={"items": [], "k": 100, "explain": True})
    out["session-explained"] = [it["item"] for it in r.json()["items"]]
    r = c.get(f"/items/{item_for_similar}/similar", params={"k": 100}, headers=h)
    # a model without an item-item similarity (pop) refuses clearly instead of faking one
    assert r.status_code == 200 or "no item-item similarity" in r.json()["detail"], r.text
    out["similar"] = [it["item"] for it in r.json().get("items", [])]
    r = c.get("/explorer/items", params={"q": "", "limit": 200}, headers=h)
    out["search"] = [it["item"] for it in r.json()["items"]]
    return out


@pytest.mark.parametrize("bundle_name", ["ease_bundle", "pop_bundle", "sasrec_bundle"])
def test_hidden_item_never_appears_in_any_response(request, make_client, sqlite_url, shop_data, bundle_name):
    bundle = request.getfixturevalue(bundle_name)
    c = make_client(bundle, sqlite_url)
    user = shop_data.user_map.to_raw(5)
    listed = _every_listing(c, user, "i1")
    hidden = next(it for it in listed["user"] if it != "i1")
    assert hidden in listed["search"] and hidden in listed["with-seen"]
    r = c.patch(f"/items/{hidden}", json={"hidden": True})
    assert r.status_code == 401  # a write
    r = c.patch(f"/items/{hidden}", json={"hidden": True}, headers=AUTH)
    assert r.status_code == 200 and r.json()["hidden"] and not r.json()["recommendable"]
    for name, items in _every_listing(c, user, "i1").items():
        assert hidden not in items, name
    assert c.get(f"/items/{hidden}").status_code == 404  # readers do not see it at all
    assert c.get(f"/items/{hidden}", headers=AUTH).json()["hidden"]  # the catalogue manager does
    # a hidden item still has similar items (pop has no item-item similarity: a clear 422)
    assert c.get(f"/items/{hidden}/similar").status_code == (422 if bundle_name == "pop_bundle" else 200)
    # unhiding brings it back everywhere
    assert c.patch(f"/items/{hidden}", json={"hidden": False}, headers=AUTH).status_code == 200
    assert hidden in rec_items(c, user, k=100)


def test_deleted_item_is_gone_and_similar_items_take_filters(make_client, ease_bundle, sqlite_url, shop_data):
    c = make_client(ease_bundle, sqlite_url)
    user = shop_data.user_map.to_raw(6)
    victim = rec_items(c, user, k=3)[0]
    assert c.delete(f"/items/{victim}").status_code == 401
    r = c.delete(f"/items/{victim}", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"item": victim, "deleted": True}
    for name, items in _every_listing(c, user, "i2").items():
        assert victim not in items, name
    assert c.get(f"/items/{victim}", headers=AUTH).status_code == 404
    assert c.get(f"/items/{victim}/similar").status_code == 404
    assert c.delete(f"/items/{victim}", headers=AUTH).status_code == 404
    assert c.patch(f"/items/{victim}", json={"hidden": False}, headers=AUTH).status_code == 404
    # POST /items registers it again
    assert c.post("/items", headers=AUTH, json={"items": [{"item": victim}]}).status_code == 201
    assert victim in rec_items(c, user, k=100)
    # similar items: exclude, categories and offset like recommendations
    base = c.get("/items/i2/similar", params={"k": 10}).json()["items"]
    ids = [it["item"] for it in base]
    page = c.get("/items/i2/similar", params={"k": 5, "offset": 5}).json()["items"]
    assert [it["item"] for it in page] == ids[5:10]
    excl = c.get("/items/i2/similar", params={"k": 10, "exclude": ids[:2]}).json()["items"]
    assert [it["item"] for it in excl][:8] == ids[2:10]
    cat = base[0]["category"]
    only = c.get("/items/i2/similar", params={"k": 10, "categories": cat}).json()["items"]
    assert only and {it["category"] for it in only} == {cat}
    none_of = c.get("/items/i2/similar", params={"k": 10, "exclude_categories": cat}).json()["items"]
    assert cat not in {it["category"] for it in none_of}


def test_patch_categories_labels_and_ttl(make_client, ease_bundle, sqlite_url, shop_data):
    c = make_client(ease_bundle, sqlite_url)
    user = shop_data.user_map.to_raw(9)
    top = rec_items(c, user, k=3)
    r = c.patch(f"/items/{top[0]}", json={"categories": ["staff-picks"], "labels": ["red", "sale"],
                                          "name": "Picked"}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["categories"] == ["staff-picks"] and r.json()["labels"] == ["red", "sale"]
    picked = c.get(f"/users/{user}/recommendations", params={"k": 10, "categories": "staff-picks"}).json()
    assert [(it["item"], it["name"]) for it in picked["items"]] == [(top[0], "Picked")]
    assert c.patch(f"/items/{top[1]}", json={"ttl_s": 0.3}, headers=AUTH).status_code == 200
    assert top[1] in rec_items(c, user, k=3)
    time.sleep(0.5)
    assert top[1] not in rec_items(c, user, k=100)  # expired: hidden from then on
    r = c.patch(f"/items/{top[2]}", json={}, headers=AUTH)
    assert r.status_code == 422 and "nothing to change" in r.json()["detail"]
    assert c.patch("/items/no-such-item", json={"hidden": True}, headers=AUTH).status_code == 404


def test_offset_pages_through_recommendations(client, shop_data):
    user = shop_data.user_map.to_raw(10)
    full = rec_items(client, user, k=30)
    assert rec_items(client, user, k=10, offset=10) == full[10:20]
    assert rec_items(client, user, k=10, offset=25)[:5] == full[25:30]
    r = client.post("/recommendations/session", json={"items": ["i1"], "k": 5, "offset": 5})
    whole = client.post("/recommendations/session", json={"items": ["i1"], "k": 10}).json()["items"]
    assert [it["item"] for it in r.json()["items"]] == [it["item"] for it in whole[5:]]
    r = client.get(f"/users/{user}/recommendations", params={"offset": 5000})
    assert r.status_code == 422 and "offset is 5000, above the configured maximum of 1000" in r.json()["detail"]


# ---- access control -------------------------------------------------------------------------
READ_ROUTES = ["/users/u1", "/users/u1/recommendations", "/users/u1/attention", "/explorer/users",
               "/explorer/items", "/explorer/model", "/admin/model", "/metrics", "/items/i1",
               "/items/i1/similar"]


def test_read_key_guards_every_route_but_the_probes(make_client, ease_bundle, sqlite_url):
    c = make_client(ease_bundle, sqlite_url, read_key=READ_KEY)
    for path in READ_ROUTES:
        assert c.get(path).status_code == 401, path
        assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401, path
        assert c.get(path, headers={"X-API-Key": READ_KEY}).status_code in (200, 404), path
        assert c.get(path, headers=AUTH).status_code in (200, 404), path  # the write key reads
    assert c.post("/recommendations/session", json={"items": []}).status_code == 401
    assert c.post("/recommendations/session", json={"items": []},
                  headers={"X-API-Key": READ_KEY}).status_code == 200
    assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
    assert c.head("/health").status_code == 200 and c.head("/ready").status_code == 200
    # the read key does not write
    r = c.post("/events", json={"user": "u", "item": "i1"}, headers={"X-API-Key": READ_KEY})
    assert r.status_code == 401
    assert c.post("/events", json={"user": "u", "item": "i1"}, headers=AUTH).status_code == 201


def test_without_a_read_key_reads_are_open_and_writes_are_not(client):
    assert client.get("/users/u1/recommendations").status_code == 200
    assert client.head("/health").status_code == 200
    assert client.post("/events", json={"user": "u", "item": "i1"}).status_code == 401


@pytest.mark.parametrize("field", ["api_key", "read_key", "secret"])
@pytest.mark.parametrize("value", ["", "   ", " padded "])
def test_startup_refuses_empty_or_whitespace_keys(ease_bundle, field, value):
    from attnrec.serving import Settings

    with pytest.raises(ValueError, match=field):
        Settings(model_path=ease_bundle, **{field: value})


def test_no_server_paths_in_responses(client, ease_bundle):
    for path in ("/admin/model", "/explorer/model", "/openapi.json", "/ready"):
        text = client.get(path).text
        assert str(ease_bundle) not in text and str(ease_bundle.parent) not in text, path
    r = client.post("/admin/reload", json={"path": "/no/such/dir/anywhere"}, headers=AUTH)
    assert r.status_code == 422 and "/no/such" not in r.text and "could not load the bundle" in r.text


def test_cors_allow_list(make_client, ease_bundle, sqlite_url):
    pre = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET",
           "Access-Control-Request-Headers": "X-API-Key"}
    c = make_client(ease_bundle, sqlite_url)  # default: no origin allowed
    r = c.options("/users/u1/recommendations", headers=pre)
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    assert "access-control-allow-origin" not in c.get("/health", headers={"Origin": "https://shop.example"}).headers
    c = make_client(ease_bundle, sqlite_url, cors_origins=["https://shop.example"], read_key=READ_KEY)
    r = c.options("/users/u1/recommendations", headers=pre)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
    r = c.get("/users/u1/recommendations", headers={"Origin": "https://shop.example", "X-API-Key": READ_KEY})
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    r = c.options("/users/u1/recommendations", headers={**pre, "Origin": "https://evil.example"})
    assert r.status_code == 400


def test_docs_work_offline(client):
    html = client.get("/docs").text
    assert "cdn" not in html.lower() and "https://" not in html.split("<body")[0]
    assets = [a.split('"')[0] for a in html.split('src="')[1:]]
    assert assets and all(client.get(a).status_code == 200 for a in assets)
    redoc = client.get("/redoc").text
    assert "cdn." not in redoc.lower()


# ---- erasure ----------------------------------------------------------------------------------
SLASH_USER = "tenant/42"


def test_slash_ids_are_written_read_and_deleted(make_client, ease_bundle, own_bundle, sqlite_url):
    c = make_client(own_bundle(ease_bundle), sqlite_url)
    enc = quote(SLASH_USER, safe="")
    for user in (SLASH_USER, "100% sure", "a/b/c", "x%2Fy", "ünïcode/ü", "q?x#y"):
        e = quote(user, safe="")
        assert c.post("/events", headers=AUTH, json={"user": user, "item": "i1"}).status_code == 201
        r = c.get(f"/users/{e}")
        assert r.status_code == 200 and r.json()["user"] == user and r.json()["stored_events"] == 1, user
        assert c.get(f"/users/{e}/recommendations").json()["user"] == user
        assert c.get(f"/users/{e}/attention").json()["user"] == user
    assert c.delete(f"/users/{enc}", headers=AUTH).json() == {"user": SLASH_USER, "deleted_events": 1}
    assert c.get(f"/users/{enc}").status_code == 404
    assert c.get("/users/a%2Fb%2Fc").json()["user"] == "a/b/c"  # the others are untouched
    assert c.get("/users/x%252Fy").json()["user"] == "x%2Fy"  # a literal %2F stays itself
    # items with '/' too
    assert c.post("/items", headers=AUTH, json={"items": [{"item": "sku/1", "name": "S"}]}).status_code == 201
    assert c.get("/items/sku%2F1").json()["name"] == "S"
    assert c.patch("/items/sku%2F1", json={"hidden": True}, headers=AUTH).status_code == 200


def test_deleted_user_is_absent_everywhere_even_with_a_fresh_database(make_client, ease_bundle, own_bundle,
                                                                      tmp_path, shop_data):
    bundle = own_bundle(ease_bundle)
    user = shop_data.user_map.to_raw(0)  # "u1"-style: the first user the model knows
    first_db = f"sqlite:///{tmp_path / 'first.db'}"
    c = make_client(bundle, first_db)
    assert user in [u["user"] for u in c.get("/explorer/users", params={"q": user}).json()["users"]]
    total = c.get("/explorer/users").json()["total"]
    card_users = c.get("/explorer/model").json()["n_users"]
    c.post("/events", headers=AUTH, json={"user": user, "item": "i1"})
    assert c.delete(f"/users/{user}", headers=AUTH).status_code == 200

    def absent(client):
        assert client.get(f"/users/{user}").status_code == 404
        att = client.get(f"/users/{user}/attention").json()  # exactly what a stranger gets
        assert att["history"] == [] and att["history_total"] == 0 and not att["known_to_model"]
        r = client.get(f"/users/{user}/recommendations").json()
        assert r["source"] == "popularity-fallback"
        found = client.get("/explorer/users", params={"q": user, "limit": 500}).json()
        assert user not in [u["user"] for u in found["users"]]
        listing = client.get("/explorer/users", params={"limit": 500}).json()
        assert user not in [u["user"] for u in listing["users"]] and listing["total"] == total - 1
        assert client.get("/explorer/model").json()["n_users"] == card_users - 1

    absent(c)
    # restart on a brand-new, empty database: the bundle's erasure list still hides them
    fresh = make_client(bundle, f"sqlite:///{tmp_path / 'fresh.db'}")
    absent(fresh)
    stored = fresh.app.state.service.store.deleted_digests()
    assert len(stored) == 1 and user not in json.dumps(sorted(stored))  # keyed, not the id
    # the bundle's list holds keys only, and a different secret cannot read it
    erasures = (bundle / "erasures.json").read_text()
    assert user not in erasures
    from attnrec.serving import Settings, create_app
    from attnrec.serving.erasure import SecretMismatch
    from fastapi.testclient import TestClient

    app = create_app(Settings(model_path=bundle, api_key=API_KEY, watch_model=False, secret="another-secret",
                              database_url=f"sqlite:///{tmp_path / 'third.db'}", data_dir=tmp_path / "d3"))
    with pytest.raises(SecretMismatch, match="ATTNREC_SECRET"):
        with TestClient(app):
            pass


def test_sqlite_deletion_leaves_no_bytes_behind(make_client, ease_bundle, own_bundle, tmp_path):
    db = tmp_path / "erase.db"
    c = make_client(own_bundle(ease_bundle), f"sqlite:///{db}")
    marker = "person-to-forget-7f3a9"
    c.post("/events/batch", headers=AUTH, json={"events": [{"user": marker, "item": f"i{i}"} for i in range(50)]})
    c.get(f"/users/{marker}")
    assert c.delete(f"/users/{marker}", headers=AUTH).status_code == 200
    with sa.create_engine(f"sqlite:///{db}").connect() as conn:
        assert conn.execute(sa.text("PRAGMA secure_delete")).scalar() == 1
    for f in tmp_path.glob("erase.db*"):  # the database file, its WAL and shared memory
        assert marker.encode() not in f.read_bytes(), f.name


# ---- graceful failure ---------------------------------------------------------------------------
def test_locked_database_gives_503_fast_and_ready_false(make_client, ease_bundle, tmp_path):
    db = tmp_path / "locked.db"
    c = make_client(ease_bundle, f"sqlite:///{db}")
    c.post("/events", headers=AUTH, json={"user": "has-events", "item": "i1"})
    other = sqlite3.connect(str(db))
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        t0 = time.monotonic()
        r = c.post("/events", headers=AUTH, json={"user": "u", "item": "i1"})
        took = time.monotonic() - t0
        assert r.status_code == 503 and took < 3.0, (r.status_code, took)
        assert r.headers["retry-after"] == "1"
        assert r.json()["retry_after_s"] == 1 and "database" in r.json()["detail"]
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False and not ready.json()["database"]
        # reads do not wait behind the lock, even for a user whose events must be read
        c.app.state.service._cache.clear()
        t0 = time.monotonic()
        assert c.get("/users/has-events").json()["stored_events"] == 1
        assert c.get("/users/has-events/recommendations").status_code == 200
        assert time.monotonic() - t0 < 1.0
    finally:
        other.rollback()
        other.close()
    assert c.get("/ready").json()["ready"]
    assert c.post("/events", headers=AUTH, json={"user": "u", "item": "i1"}).status_code == 201


def test_cache_memory_is_bounded_under_10000_anonymous_users(make_client, ease_bundle, sqlite_url, shop_data):
    import psutil

    limit = 256 * 1024
    c = make_client(ease_bundle, sqlite_url, cache_max_bytes=limit)
    service = c.app.state.service
    proc = psutil.Process()

    def gauge(name):
        for line in c.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])

    import asyncio

    async def hit(prefix: str, n: int) -> None:
        # straight into the ASGI app (no thread hop per request): 10,000 requests in seconds
        transport = httpx.ASGITransport(app=c.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            for i in range(n):
                r = await ac.get(f"/users/{prefix}-{i}/recommendations", params={"k": 20})
                assert r.status_code == 200

    asyncio.run(hit("warm", 300))  # warm up allocator and caches
    rss0 = proc.memory_info().rss
    asyncio.run(hit("anon", 10_000))
    grown = proc.memory_info().rss - rss0
    assert gauge("attnrec_cache_bytes") <= limit
    assert service._cache_bytes <= limit
    assert grown < 20 * 2**20, grown  # was ~24 MB per 1,000 requests
    # known users are cached (and recommendations memoised) within the same bound
    for u in range(shop_data.n_users):
        c.get(f"/users/{shop_data.user_map.to_raw(u)}/recommendations", params={"k": 50})
    assert 0 < gauge("attnrec_cached_users") < shop_data.n_users
    assert gauge("attnrec_cache_bytes") <= limit


def test_symlinked_bundle_is_re_resolved(make_client, ease_bundle, pop_bundle, tmp_path, sqlite_url):
    link = tmp_path / "current"
    link.symlink_to(ease_bundle)
    c = make_client(link, sqlite_url, watch_model=True, watch_interval_s=0.2)
    assert c.get("/admin/model").json()["model"] == "ease"

    def swap(target):
        tmp = tmp_path / "current.tmp"
        tmp.symlink_to(target)
        os.replace(tmp, link)  # atomic, as a deploy script does it

    swap(pop_bundle)
    deadline = time.monotonic() + 10
    while c.get("/admin/model").json()["model"] != "pop":
        assert time.monotonic() < deadline, "the watcher never noticed the swapped link"
        time.sleep(0.1)
    # an explicit reload without a path follows the link as well
    c.app.state.service.settings.watch_model = False
    c2 = make_client(link, f"sqlite:///{tmp_path / 'b.db'}")
    swap(ease_bundle)
    assert c2.get("/admin/model").json()["model"] == "pop"
    r = c2.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["changed"]
    assert c2.get("/admin/model").json()["model"] == "ease"


def _slow_post(url: str, path: str, headers: dict, first: bytes, pause: float) -> tuple[int, float]:
    host, port = url.replace("http://", "").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(15)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    t0 = time.monotonic()
    s.sendall(head.encode() + first)  # then nothing: a half-sent body
    data = s.recv(4096)
    s.close()
    return int(data.split(b" ")[1]), time.monotonic() - t0


def test_half_sent_bodies_time_out(live_server, ease_bundle):
    server = live_server(ease_bundle, body_timeout_s=0.5)
    code, took = _slow_post(server.url, "/events", AUTH, b'{"user": "u", ', 5)
    assert code == 408 and took < 3


# ---- more than one worker -------------------------------------------------------------------
def test_an_event_on_one_worker_reaches_every_worker(db_url, tmp_path, ease_bundle, own_bundle, shop, shop_data):
    from attnrec.serving import Settings, create_app

    bundle = own_bundle(ease_bundle)
    kw = dict(model_path=bundle, database_url=db_url, api_key=API_KEY, watch_model=False,
              sync_interval_s=0.2, data_dir=tmp_path / "shared", secret="shared-secret-123")
    with LiveServer(create_app(Settings(**kw))) as a, LiveServer(create_app(Settings(**kw))) as b:
        user, product, accessory = user_with_room(shop_data, shop.rules, n=1, seed=21)[0]
        hb = httpx.Client(base_url=b.url)
        ha = httpx.Client(base_url=a.url, headers=AUTH)
        before = [it["item"] for it in hb.get(f"/users/{user}/recommendations").json()["items"]]
        assert accessory not in before  # and worker B has the user cached now

        def wait(check) -> float:
            t0 = time.monotonic()
            while not check():
                assert time.monotonic() - t0 < 3.0, "not reflected within the documented delay"
                time.sleep(0.02)
            return time.monotonic() - t0

        assert ha.post("/events", json={"user": user, "item": product}).status_code == 201
        delay = wait(lambda: accessory in [it["item"] for it in
                                           hb.get(f"/users/{user}/recommendations").json()["items"]])
        assert delay < 0.2 + 1.0  # sync_interval_s + one poll
        # a hidden item, and a deletion, travel the same way
        top = hb.get(f"/users/{user}/recommendations").json()["items"][0]["item"]
        assert ha.patch(f"/items/{top}", json={"hidden": True}).status_code == 200
        wait(lambda: top not in [it["item"] for it in hb.get(f"/users/{user}/recommendations").json()["items"]])
        assert ha.delete(f"/users/{user}").status_code == 200
        wait(lambda: hb.get(f"/users/{user}").status_code == 404)
        ha.close()
        hb.close()


def test_attnrec_serve_with_two_workers(ease_bundle, own_bundle, tmp_path, shop_data):
    """The CLI starts N worker processes on one port; every one reflects an event within the delay."""
    import signal
    import subprocess
    import sys

    import psutil

    from .conftest import free_port

    port = free_port()
    env = {**os.environ, "ATTNREC_API_KEY": API_KEY, "ATTNREC_SYNC_INTERVAL_S": "0.2",
           "ATTNREC_WATCH_MODEL": "false", "ATTNREC_SECRET": "cli-secret-0123"}
    proc = subprocess.Popen([sys.executable, "-m", "attnrec", "serve", "--model", str(own_bundle(ease_bundle)),
                             "--db", f"sqlite:///{tmp_path / 'w.db'}", "--port", str(port), "--workers", "2",
                             "--data-dir", str(tmp_path / "d")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the workers did not start"
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "python" in p.name()]
        assert len(workers) >= 2
        user = shop_data.user_map.to_raw(1)
        for _ in range(20):  # both workers cache the user (new connections spread over them)
            assert httpx.get(f"{url}/users/{user}").json()["stored_events"] == 0
        r = httpx.post(url + "/events", headers=AUTH, json={"user": user, "item": "i1"})
        assert r.status_code == 201
        t0, streak = time.monotonic(), 0
        while streak < 10:
            r = httpx.get(f"{url}/users/{user}")
            streak = streak + 1 if r.status_code == 200 and r.json()["stored_events"] == 1 else 0
            assert time.monotonic() - t0 < 5.0, "not every worker reflected the event in time"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


@pytest.mark.postgres
def test_locked_postgres_table_gives_503_fast_and_ready_false(make_client, ease_bundle, postgres_url):
    import psycopg

    c = make_client(ease_bundle, postgres_url)
    c.post("/events", headers=AUTH, json={"user": "has-events", "item": "i1"})
    other = psycopg.connect(postgres_url)
    other.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # writes wait, reads do not
    try:
        t0 = time.monotonic()
        r = c.post("/events", headers=AUTH, json={"user": "u", "item": "i1"})
        assert r.status_code == 503 and time.monotonic() - t0 < 3.0
        assert r.headers["retry-after"] == "1" and r.json()["retry_after_s"] == 1
        assert c.get("/ready").json()["ready"] is False
        c.app.state.service._cache.clear()
        t0 = time.monotonic()
        assert c.get("/users/has-events").json()["stored_events"] == 1
        assert time.monotonic() - t0 < 1.0
    finally:
        other.rollback()
        other.close()
    assert c.get("/ready").json()["ready"]
    assert c.post("/events", headers=AUTH, json={"user": "u", "item": "i1"}).status_code == 201


def test_filter_mask_caches_are_bounded_in_bytes(client, monkeypatch, shop_data):
    import itertools

    from attnrec.serving import engine

    n = shop_data.n_items + 1
    monkeypatch.setattr(engine, "MASK_CACHE_BYTES", 5 * n)  # room for five masks
    cats = client.get("/explorer/model").json()["categories"]
    pairs = list(itertools.combinations(cats, 2))
    assert len(pairs) > 5
    for a, b in pairs:
        r = client.get("/users/u1/recommendations", params={"categories": [a, b]})
        assert r.status_code == 200 and {it["category"] for it in r.json()["items"]} <= {a, b}
    text = client.get("/metrics").text
    value = float(next(line.split()[1] for line in text.splitlines()
                       if line.startswith("attnrec_filter_cache_bytes ")))
    assert 0 < value <= 5 * n


def test_erasure_list_merges_concurrent_writers(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from attnrec.serving.erasure import read_erasures, write_erasures

    secret = b"s3cret"
    digests = [f"{i:064x}" for i in range(40)]
    with ThreadPoolExecutor(8) as pool:  # workers deleting at the same moment
        assert all(pool.map(lambda d: write_erasures(tmp_path, secret, {d}), digests))
    assert read_erasures(tmp_path, secret) == set(digests)


def test_read_only_bundle_still_deletes_and_says_so(make_client, ease_bundle, own_bundle, sqlite_url,
                                                   shop_data, caplog, monkeypatch):
    from attnrec.serving import erasure

    c = make_client(own_bundle(ease_bundle), sqlite_url)
    user = shop_data.user_map.to_raw(11)

    def read_only(*_a, **_k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(erasure.tempfile, "mkstemp", read_only)  # as on a read-only mount
    assert c.delete(f"/users/{user}", headers=AUTH).status_code == 200
    assert c.get(f"/users/{user}").status_code == 404
    assert "could not record deletions next to the bundle" in caplog.text
