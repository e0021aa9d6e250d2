"""Endpoint behaviour on an EASE model trained on the synthetic shop."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from attnrec.serving.schemas import EventAck, ItemOut, Recommendations, UserOut

from .conftest import AUTH, user_with_room


def recs(client, user, **params):
    r = client.get(f"/users/{user}/recommendations", params=params)
    assert r.status_code == 200, r.text
    body = Recommendations.model_validate(r.json())  # the documented schema, exactly
    assert r.headers["x-model-version"] == body.model_version
    return body


def test_known_user_recommendations_exclude_history(client, shop_data):
    user = shop_data.user_map.to_raw(0)
    body = recs(client, user, k=10)
    assert body.source == "model" and body.user == user
    assert len(body.items) == 10
    seen = set(shop_data.item_map.decode(shop_data.sequence(0)))
    assert not seen & {it.item for it in body.items}
    scores = [it.score for it in body.items]
    assert scores == sorted(scores, reverse=True)
    assert all(it.name and it.category for it in body.items)  # from items.csv


def test_matches_model_recommend(client, shop_data, ease_model):
    """The lean serving path gives the model contract's own top-k."""
    for u in (0, 5, 17):
        body = recs(client, shop_data.user_map.to_raw(u), k=10)
        ids, _ = ease_model.recommend([shop_data.sequence(u)], k=10)
        assert [it.item for it in body.items] == shop_data.item_map.decode(ids[0])


def test_exclude_list_and_include_seen(client, shop_data):
    user = shop_data.user_map.to_raw(1)
    first = recs(client, user, k=5)
    top = first.items[0].item
    again = recs(client, user, k=5, exclude=[top])
    assert top not in [it.item for it in again.items]
    with_seen = recs(client, user, k=50, exclude_seen="false")
    seen = set(shop_data.item_map.decode(shop_data.sequence(1)))
    assert seen & {it.item for it in with_seen.items}


def test_category_filters(client, shop_data):
    user = shop_data.user_map.to_raw(2)
    only = recs(client, user, k=10, categories=["socks", "mugs"])
    assert only.items and {it.category for it in only.items} <= {"socks", "mugs"}
    without = recs(client, user, k=30, exclude_categories=["socks"])
    assert "socks" not in {it.category for it in without.items}
    r = client.get(f"/users/{user}/recommendations", params={"categories": "no-such-category"})
    assert r.status_code == 422 and "unknown categories" in r.json()["detail"]


def test_category_filter_without_catalogue(make_client, ease_bundle_plain, sqlite_url, shop_data):
    c = make_client(ease_bundle_plain, sqlite_url)
    r = c.get(f"/users/{shop_data.user_map.to_raw(0)}/recommendations", params={"categories": "socks"})
    assert r.status_code == 422 and "items.csv" in r.json()["detail"]
    body = recs(c, shop_data.user_map.to_raw(0), k=3)
    assert body.items[0].name is None


def test_explain_item_item_weights_are_the_score_terms(client, shop_data, ease_model):
    u = 3
    user = shop_data.user_map.to_raw(u)
    body = recs(client, user, k=5, explain="true")
    hist = shop_data.sequence(u)
    W = ease_model.weights_.numpy()
    for it in body.items:
        ex = it.explanation
        assert ex is not None and ex.method == "item-item weights"
        assert ex.because and len(ex.because) <= 5
        j = shop_data.item_map.to_dense(it.item)
        contrib = {int(h): float(W[h, j - 1]) for h in np.unique(hist)}
        total = sum(abs(v) for v in contrib.values())
        # the listed weights are the history items' exact shares of the score, strongest first
        for b in ex.because:
            h = shop_data.item_map.to_dense(b.item)
            assert b.weight == pytest.approx(contrib[h] / total, rel=1e-4, abs=1e-6)
            assert hist[b.position] == h
        best = max(contrib, key=contrib.get)
        assert ex.because[0].item == shop_data.item_map.to_raw(best)
        # and they add up to the score
        assert sum(contrib.values()) == pytest.approx(it.score, rel=1e-4, abs=1e-5)


def test_explain_attention_for_sasrec(make_client, sasrec_bundle, sqlite_url, shop_data):
    c = make_client(sasrec_bundle, sqlite_url)
    body = recs(c, shop_data.user_map.to_raw(4), k=3, explain="true")
    hist = shop_data.sequence(4)
    for it in body.items:
        assert it.explanation.method == "attention"
        ws = [b.weight for b in it.explanation.because]
        assert ws and all(w >= 0 for w in ws) and sum(ws) <= 1.0 + 1e-6
        assert ws == sorted(ws, reverse=True)
        for b in it.explanation.because:
            assert shop_data.item_map.to_raw(int(hist[b.position])) == b.item


def test_new_event_changes_recommendations_immediately(client, shop, shop_data):
    """After a "product" event, its planted accessory enters the user's top-10."""
    triples = user_with_room(shop_data, shop.rules, n=12, seed=1)
    hits = 0
    for user, product, accessory in triples:
        before = [it.item for it in recs(client, user, k=10).items]
        r = client.post("/events", json={"user": user, "item": product, "event_type": "purchase"},
                        headers=AUTH)
        assert r.status_code == 201
        after = [it.item for it in recs(client, user, k=10).items]
        assert after != before and product not in after  # seen now, so excluded
        hits += accessory in after and accessory not in before[:1]
    assert hits >= 0.75 * len(triples), f"accessory reached the top-10 for only {hits}/{len(triples)}"


def test_explanation_names_the_new_event(client, shop, shop_data):
    user, product, accessory = user_with_room(shop_data, shop.rules, n=1, seed=2)[0]
    client.post("/events", json={"user": user, "item": product}, headers=AUTH)
    body = recs(client, user, k=10, explain="true")
    acc = next(it for it in body.items if it.item == accessory)
    assert acc.explanation.because[0].item == product
    assert acc.explanation.because[0].position == len(shop_data.sequence(shop_data.user_map.to_dense(user)))


def test_session_recommendations(client, shop, shop_data):
    product = sorted(shop.rules)[0]
    r = client.post("/recommendations/session",
                    json={"items": [product, "not-an-item"], "k": 10, "explain": True})
    assert r.status_code == 200, r.text
    body = Recommendations.model_validate(r.json())
    assert body.source == "model" and body.user is None
    assert body.unknown_items == ["not-an-item"]
    items = [it.item for it in body.items]
    assert product not in items and shop.rules[product] in items
    assert all(it.explanation.because[0].item == product for it in body.items
               if it.explanation.because)
    # nothing known: popularity, labelled
    r = client.post("/recommendations/session", json={"items": ["x1", "x2"], "k": 3})
    assert r.json()["source"] == "popularity-fallback"


def test_similar_items(client, shop):
    product = sorted(shop.rules)[1]
    r = client.get(f"/items/{product}/similar", params={"k": 5})
    assert r.status_code == 200
    items = [it["item"] for it in r.json()["items"]]
    assert product not in items and shop.rules[product] in items
    assert client.get("/items/nope/similar").status_code == 404
    info = ItemOut.model_validate(client.get(f"/items/{product}").json())
    assert info.known_to_model and info.category and info.fit_interactions > 0


def test_new_user_is_scored_from_stored_events_like_a_session(client, shop, shop_data):
    counts = shop_data.item_counts()
    top = shop_data.item_map.to_raw(int(np.argmax(counts)))
    product = sorted(p for p in shop.rules if p in shop_data.item_map and shop.rules[p] in shop_data.item_map)[0]
    r = client.post("/events/batch", headers=AUTH, json={"events": [
        {"user": "newcomer", "item": product, "timestamp": 1.7e9},
        {"user": "newcomer", "item": "brand-new-item", "timestamp": 1.7e9 + 1},
    ]})
    assert r.status_code == 201
    ack = EventAck.model_validate(r.json())
    assert (ack.stored, ack.unknown_items, ack.unknown_users) == (2, 1, 2)
    body = recs(client, "newcomer", k=5)
    assert body.source == "model"  # the bundle has never seen them: scored from their events
    items = [it.item for it in body.items]
    assert product not in items and shop.rules[product] in items  # the planted reaction to their event
    session = client.post("/recommendations/session", json={"items": [product], "k": 5}).json()
    assert items == [it["item"] for it in session["items"]]  # exactly as an anonymous session
    user = UserOut.model_validate(client.get("/users/newcomer").json())
    assert not user.known_to_model and user.stored_events == 2 and user.recent_items == [product]
    # no event of a known item: popular items they have not seen, labelled
    client.post("/events", headers=AUTH, json={"user": "stranger", "item": "another-new-item"})
    body = recs(client, "stranger", k=5)
    assert body.source == "popularity-fallback"
    order = np.argsort(-counts[1:], kind="stable") + 1
    assert [it.item for it in body.items] == [shop_data.item_map.to_raw(int(i)) for i in order[:5]]
    assert top == body.items[0].item
    metrics = client.get("/metrics").text
    assert "attnrec_unknown_item_events_total 2.0" in metrics
    assert "attnrec_unknown_user_events_total 3.0" in metrics
    assert client.get("/users/never-seen").status_code == 404


def test_unknown_events_used_after_retrain(client, shop_data, bundles_dir, catalogue_csv):
    from attnrec.models import EASE

    from .conftest import _save, extend_data

    known = shop_data.item_map.decode(shop_data.sequence(0)[:3])
    client.post("/events/batch", headers=AUTH, json={"events": [
        {"user": "late", "item": i} for i in [*known, "fresh-item"]]})
    before = recs(client, "late", k=3)
    assert before.source == "model" and "fresh-item" not in [it.item for it in before.items]  # unknown yet
    assert not UserOut.model_validate(client.get("/users/late").json()).known_to_model
    data2 = extend_data(shop_data, {"late": [*known, "fresh-item"], "other": ["fresh-item", known[0]]})
    bundle2 = _save(EASE(l2=10.0).fit(data2), bundles_dir / "ease-retrained", catalogue_csv)
    r = client.post("/admin/reload", json={"path": str(bundle2)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["changed"]
    body = recs(client, "late", k=3)
    assert body.source == "model" and body.model_version == r.json()["version"]
    assert "fresh-item" not in [it.item for it in body.items]  # now known, and seen
    assert UserOut.model_validate(client.get("/users/late").json()).known_to_model


def test_delete_user_removes_everything(make_client, ease_bundle, own_bundle, db_url, shop_data):
    c = make_client(own_bundle(ease_bundle), db_url)
    user = shop_data.user_map.to_raw(7)
    c.post("/events/batch", headers=AUTH, json={"events": [{"user": user, "item": "i1"},
                                                           {"user": user, "item": "zzz"}]})
    before = recs(c, user, k=5)  # cached
    assert before.source == "model"
    assert c.delete(f"/users/{user}").status_code == 401
    r = c.delete(f"/users/{user}", headers=AUTH)
    assert r.status_code == 200 and r.json()["deleted_events"] == 2
    assert c.get(f"/users/{user}").status_code == 404
    assert recs(c, user, k=5).source == "popularity-fallback"
    assert c.delete(f"/users/{user}", headers=AUTH).status_code == 404
    # nothing of theirs in any table: the raw id appears nowhere
    engine = sa.create_engine(c.app.state.service.settings.database_url)
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            assert not any(user == str(v) for row in rows for v in row), table
    engine.dispose()


def test_deletion_survives_restart(make_client, ease_bundle, own_bundle, sqlite_url, shop_data):
    user = shop_data.user_map.to_raw(8)
    bundle = own_bundle(ease_bundle)
    c = make_client(bundle, sqlite_url)
    assert c.delete(f"/users/{user}", headers=AUTH).status_code == 200
    c2 = make_client(bundle, sqlite_url)  # a new process on the same database
    assert c2.get(f"/users/{user}").status_code == 404
    assert recs(c2, user, k=3).source == "popularity-fallback"
    # new events after deletion are a fresh start, not a resurrection of the old history
    c2.post("/events", headers=AUTH, json={"user": user, "item": "i2"})
    u = UserOut.model_validate(c2.get(f"/users/{user}").json())
    assert not u.known_to_model and u.fit_events == 0 and u.stored_events == 1
    body = recs(c2, user, k=5)  # scored from the one new event alone, as a session of it is
    session = c2.post("/recommendations/session", json={"items": ["i2"], "k": 5}).json()
    assert body.source == "model" and [it.item for it in body.items] == [it["item"] for it in session["items"]]


def test_events_on_postgres_and_sqlite(make_client, ease_bundle, db_url, shop, shop_data):
    c = make_client(ease_bundle, db_url)
    user, product, accessory = user_with_room(shop_data, shop.rules, n=1, seed=3)[0]
    r = c.post("/events/batch", headers=AUTH,
               json={"events": [{"user": user, "item": product, "event_type": "view", "timestamp": 1_700_000_005.5}]})
    assert r.status_code == 201
    assert accessory in [it.item for it in recs(c, user, k=10).items]
    store = c.app.state.service.store
    ev = store.user_events(user)
    assert [(e.item, e.event_type, e.timestamp) for e in ev] == [(product, "view", 1_700_000_005.5)]


def test_health_ready_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["database"]
    version = ready.json()["model_version"]
    client.get("/users/u1/recommendations")
    text = client.get("/metrics").text
    assert f'attnrec_model_info{{model="ease",version="{version}"}} 1.0' in text
    assert 'attnrec_http_requests_total{method="GET",route="/users/{user}/recommendations",status="200"}' in text
    assert "attnrec_http_request_duration_seconds_bucket" in text
    assert client.get("/docs").status_code == 200
    assert client.get("/admin/model").json()["version"] == version


def test_explain_itemknn_similarities(make_client, shop_data, bundles_dir, catalogue_csv, sqlite_url):
    from attnrec.models import ItemKNN

    from .conftest import _save

    model = ItemKNN(k_neighbors=30).fit(shop_data)
    c = make_client(_save(model, bundles_dir / "knn", catalogue_csv), sqlite_url)
    u = 6
    body = recs(c, shop_data.user_map.to_raw(u), k=5, explain="true")
    ids, _ = model.recommend([shop_data.sequence(u)], k=5)
    assert [it.item for it in body.items] == shop_data.item_map.decode(ids[0])
    S = model.similarity_
    hist = np.unique(shop_data.sequence(u))
    for it in body.items:
        j = shop_data.item_map.to_dense(it.item)
        contrib = np.asarray(S[hist, j].todense()).ravel()
        assert it.explanation.method == "item-item weights"
        top = it.explanation.because[0]
        assert shop_data.item_map.to_dense(top.item) == hist[np.argmax(contrib)]
        assert top.weight == pytest.approx(contrib.max() / np.abs(contrib).sum(), rel=1e-4)


def test_popularity_model_is_labelled(make_client, pop_bundle, sqlite_url, shop_data):
    c = make_client(pop_bundle, sqlite_url)
    body = recs(c, shop_data.user_map.to_raw(0), k=3, explain="true")
    assert body.source == "model"
    assert all(it.explanation.method == "popularity" and it.explanation.because == [] for it in body.items)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_service_answers_from_a_faiss_index(kind, make_client, sasrec_bundle, sqlite_url, shop_data, tmp_path):
    """``index=hnsw/ivf``: top-k comes from FAISS, history excluded, k results, ~the exact lists."""
    import shutil

    bundle = shutil.copytree(sasrec_bundle, tmp_path / "bundle")
    exact = make_client(sasrec_bundle, sqlite_url, index="exact")
    approx = make_client(bundle, f"sqlite:///{tmp_path / 'other.db'}", index=kind)
    assert list(bundle.glob(f"index-{kind}-*.faiss"))  # the index was built (and cached for reloads)
    overlap = []
    for u in range(20):
        user = shop_data.user_map.to_raw(u)
        want = [it.item for it in recs(exact, user, k=10).items]
        got = [it.item for it in recs(approx, user, k=10).items]
        assert len(got) == 10
        assert not set(got) & set(shop_data.item_map.decode(shop_data.sequence(u)))
        overlap.append(len(set(got) & set(want)) / 10)
    assert np.mean(overlap) >= 0.9, overlap
