"""A retrained bundle swapped into the running service: its events count once, later ones are appended."""

from __future__ import annotations

import json

from attnrec.continuous import EventTypes, retrain
from attnrec.models import EASE
from attnrec.models.base import Recommender

from .conftest import AUTH, SECRET, extend_data  # SECRET: the service's (make_client sets it)


def history(client, user: str) -> list[str]:
    r = client.get(f"/users/{user}", params={"recent": 100})
    assert r.status_code == 200, r.text
    return r.json()["recent_items"]


def test_no_double_count_after_swap(make_client, shop_data, tmp_path, sqlite_url):
    # the current bundle also knows a user with a short history, so the whole sequence fits in `recent`
    data = extend_data(shop_data, {"short-user": ["i1", "i2"]})
    bundle = EASE(l2=10.0).fit(data).save(tmp_path / "served")
    client = make_client(bundle, sqlite_url)
    fit = history(client, "short-user")
    assert fit == ["i1", "i2"]
    new_events = [{"user": "short-user", "item": "i3"}, {"user": "short-user", "item": "brand-new-item"},
                  {"user": "new-user", "item": "i4"}, {"user": "new-user", "item": "brand-new-item"}]
    for ev in new_events:
        assert client.post("/events", json=ev, headers=AUTH).status_code == 201
    assert history(client, "short-user") == ["i1", "i2", "i3"]  # the current model does not know the new item
    gone = data.user_map.to_raw(0)
    assert client.delete(f"/users/{gone}", headers=AUTH).status_code == 200
    assert client.post("/events", json={"user": gone, "item": "i7"}, headers=AUTH).status_code == 201

    res = retrain(bundle, sqlite_url, bundle, event_types=EventTypes(), tolerance=1.0, secret=SECRET.encode())
    assert res.accepted
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200 and r.json()["changed"], r.text
    # the new bundle contains the stored events; the service does not append them again
    assert history(client, "short-user") == ["i1", "i2", "i3", "brand-new-item"]
    assert history(client, "new-user") == ["i4", "brand-new-item"]
    assert client.get("/users/new-user").json()["known_to_model"] is True

    # an event stored after the retrain is appended, once
    assert client.post("/events", json={"user": "short-user", "item": "i5"}, headers=AUTH).status_code == 201
    assert history(client, "short-user") == ["i1", "i2", "i3", "brand-new-item", "i5"]
    new = Recommender.load(bundle)
    assert "brand-new-item" in new.item_map_
    info = json.loads((bundle / "config.json").read_text())["info"]
    assert info["last_event_id"] == len(new_events) + 1
    # the deleted user is not in the new bundle; what they posted after the deletion is served from the store
    assert gone not in new.user_map_
    body = client.get(f"/users/{gone}", params={"recent": 100}).json()
    assert body["recent_items"] == ["i7"] and body["known_to_model"] is False


def test_bundle_ids_from_another_store_are_not_applied(make_client, shop_data, tmp_path, sqlite_url):
    """A retrained bundle served with a fresh database: its event ids mean nothing there."""
    data = extend_data(shop_data, {"short-user": ["i1", "i2"]})
    bundle = EASE(l2=10.0).fit(data).save(tmp_path / "served")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    c1 = make_client(bundle, other)
    for item in ("i3", "i4"):
        assert c1.post("/events", json={"user": "short-user", "item": item}, headers=AUTH).status_code == 201
    retrain(bundle, other, tmp_path / "retrained", event_types=EventTypes(), tolerance=1.0,
            secret=SECRET.encode())
    c2 = make_client(tmp_path / "retrained", sqlite_url)  # a fresh store: event ids restart at 1
    assert c2.post("/events", json={"user": "short-user", "item": "i5"}, headers=AUTH).status_code == 201
    assert history(c2, "short-user") == ["i1", "i2", "i3", "i4", "i5"]
