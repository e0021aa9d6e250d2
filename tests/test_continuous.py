"""Continuous learning: training log from bundle + event store, guard, atomic write, no double count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attnrec.continuous import (
    EventTypes,
    StoreView,
    build_training_log,
    export_events,
    holdout_latest,
    retrain,
    score_cases,
)
from attnrec.data.dataset import IdMap, SequenceData
from attnrec.data.synthetic import generate
from attnrec.models import EASE
from attnrec.models.base import Recommender
from attnrec.serving.store import EventStore

TYPES = EventTypes({"purchase": 3, "view": 1, "dislike": -1, "impression": 0})
SECRET = b"attnrec-test-secret"  # EventStore's default, for tests


def tiny_bundle(histories: dict[str, list[tuple[str, float]]]) -> EASE:
    """EASE fitted on raw ``{user: [(item, time), ...]}`` (time-ordered)."""
    umap, imap = IdMap(offset=0), IdMap(offset=1)
    seqs, times = [], []
    for user, events in histories.items():
        umap.add(user)
        seqs.append([imap.add(i) for i, _ in events])
        times.append([t for _, t in events])
    data = SequenceData.from_lists(seqs, len(imap), user_map=umap, item_map=imap, timestamps=times)
    return EASE(l2=1.0).fit(data)


def user_log(data: SequenceData, user: str) -> list[str]:
    return data.item_map.decode(data.sequence(data.user_map.to_dense(user)))


@pytest.fixture
def store(tmp_path):
    s = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield s
    s.close()


def add(store: EventStore, *events) -> None:
    store.add_events([{"user_id": u, "item_id": i, "ts": t, "event_type": e} for u, i, t, e in events])


BASE = {"u1": [("a", 10.0), ("b", 20.0)], "u2": [("a", 5.0), ("c", 6.0)], "u3": [("b", 1.0), ("c", 2.0)]}


def test_log_is_in_event_time_order_with_new_users_and_items(store):
    add(store, ("u1", "d", 30.0, None), ("u1", "x", 15.0, None),  # x arrives late but happened at 15
        ("u4", "e", 3.0, None), ("u4", "a", 1.0, None))
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    assert user_log(tlog.data, "u1") == ["a", "x", "b", "d"]
    assert user_log(tlog.data, "u4") == ["a", "e"]  # a new user, ordered by time, not arrival
    # bundle items keep their ids; new ones follow in the order of their first event time
    assert tlog.data.item_map.raw_ids == ["a", "b", "c", "e", "x", "d"]
    assert tlog.counts["new_users"] == 1 and tlog.counts["new_items"] == 3
    assert sorted(tlog.data.user_map.decode(tlog.active_users)) == ["u1", "u4"]
    assert tlog.last_event_id == 4
    t = tlog.data.timestamps[tlog.data.indptr[0]: tlog.data.indptr[1]]
    assert t.tolist() == [10.0, 15.0, 20.0, 30.0]


def test_untimed_events_use_arrival_time(store):
    add(store, ("u1", "d", None, None))
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    # arrival time is now, after the fit-time events of 1970
    assert user_log(tlog.data, "u1") == ["a", "b", "d"]


def test_duplicates_are_counted_once(store):
    # the stored copy of a fit-time event, and a retried post of the same event
    add(store, ("u1", "b", 20.0, None), ("u2", "d", 7.0, None), ("u2", "d", 7.0, None),
        ("u2", "d", 9.0, None))  # the same item at another time is a repeat, not a duplicate
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    assert user_log(tlog.data, "u1") == ["a", "b"]
    assert user_log(tlog.data, "u2") == ["a", "c", "d", "d"]
    assert tlog.counts["duplicates"] == 2
    assert tlog.counts["stored_used"] == 2


def test_deleted_users_leave_log_and_id_map(store):
    add(store, ("u3", "d", 30.0, None), ("u5", "d", 30.0, None), ("u5", "a", 31.0, None))
    store.delete_user("u3")  # in the bundle and in the store
    store.delete_user("u5")  # only in the store
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    assert tlog.data.user_map.raw_ids == ["u1", "u2"]
    assert "d" not in tlog.data.item_map  # only the deleted users had it
    assert tlog.counts["deleted_users"] == 1 and tlog.counts["deleted_user_events"] == 2


def test_negative_and_exclude_only_types_are_not_positives(store):
    add(store, ("u1", "c", 30.0, "purchase"), ("u1", "d", 31.0, "dislike"),
        ("u1", "x", 32.0, "impression"), ("u1", "e", 33.0, "view"))
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), TYPES)
    assert user_log(tlog.data, "u1") == ["a", "b", "c", "e"]
    assert "d" not in tlog.data.item_map and "x" not in tlog.data.item_map
    assert tlog.counts["not_positive"] == 2
    # with nothing declared every event is positive (the service's default)
    everything = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    assert user_log(everything.data, "u1") == ["a", "b", "c", "d", "x", "e"]


def test_undeclared_stored_type_counts_as_positive(store):
    # as for the service: changing the declaration never silently drops history
    add(store, ("u1", "c", 30.0, "wishlist"))
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), TYPES)
    assert user_log(tlog.data, "u1") == ["a", "b", "c"]


def test_events_after_a_deletion_stay_out_of_training(store):
    add(store, ("u1", "c", 30.0, None))
    store.delete_user("u1")
    add(store, ("u1", "d", 40.0, None), ("u1", "e", 41.0, None))  # the same id comes back
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store), EventTypes())
    assert "u1" not in tlog.data.user_map and "d" not in tlog.data.item_map
    assert tlog.counts["deleted_user_events"] == 4  # 2 fit-time + 2 stored after the deletion


def test_bundle_erasures_count_as_deletions(store):
    """A fresh database has no tombstones; the bundle's erasure list still removes the user."""
    tlog = build_training_log(tiny_bundle(BASE), StoreView(store, erasures={store.digest("u2")}), EventTypes())
    assert tlog.data.user_map.raw_ids == ["u1", "u3"]


def test_holdout_latest_hand_computed():
    data = SequenceData.from_lists([[1, 2, 3], [2], [3, 1]], 3)
    train, cases = holdout_latest(data, np.array([0, 1, 2]))
    assert [s.tolist() for s in train.sequences()] == [[1, 2], [2], [3]]  # user 1 has no history to predict from
    assert cases.users == ["0", "2"] and cases.targets == ["3", "1"]
    assert cases.histories == [["1", "2"], ["3"]]


def test_score_cases_counts_unknown_targets_as_misses():
    m = tiny_bundle(BASE)
    from attnrec.continuous import HeldOutCases

    # "c" ranks first for a user with history [a, b]? compute it, then compare with a case whose
    # target the model does not know
    ids, _ = m.recommend([m.item_map_.encode(["a"])], k=2)
    top = m.item_map_.to_raw(int(ids[0][0]))
    cases = HeldOutCases(["u1", "u9"], [["a"], ["a", "zz"]], [top, "new-item"])
    res = score_cases(m, cases)
    assert res["HR@10"] == pytest.approx(0.5) and res["NDCG@10"] == pytest.approx(0.5)  # rank 1, then a miss
    assert res["cases"] == 2


# ---- full rounds on the synthetic shop ------------------------------------------------------------
@pytest.fixture(scope="module")
def shop_split():
    shop = generate(n_users=300, n_items=80, seed=3)
    lg = shop.log
    cut = float(np.quantile(lg.timestamp, 0.7))
    # a quarter of the catalogue is launched at the cut-off: only a retrained model knows it
    launched = np.isin(lg.item, np.unique(lg.item)[::4])
    before = (lg.timestamp < cut) & ~launched
    keep_after = lg.timestamp >= cut
    umap, imap = IdMap(offset=0), IdMap(offset=1)
    per_user: dict[int, list[tuple[int, float]]] = {}
    for u, i, t in zip(lg.user[before], lg.item[before], lg.timestamp[before]):
        per_user.setdefault(umap.add(u), []).append((imap.add(i), float(t)))
    seqs = [[i for i, _ in per_user[u]] for u in range(len(umap))]
    times = [[t for _, t in per_user[u]] for u in range(len(umap))]
    data = SequenceData.from_lists(seqs, len(imap), user_map=umap, item_map=imap, timestamps=times)
    after = [(str(u), str(i), float(t)) for u, i, t in
             zip(lg.user[keep_after], lg.item[keep_after], lg.timestamp[keep_after])]
    return data, after


@pytest.fixture
def served(tmp_path, shop_split):
    """A current EASE bundle and a store holding the events after its cut-off."""
    data, after = shop_split
    bundle = EASE(l2=10.0).fit(data).save(tmp_path / "current")
    url = f"sqlite:///{tmp_path / 'events.db'}"
    s = EventStore(url)
    s.add_events([{"user_id": u, "item_id": i, "ts": t, "event_type": "purchase"} for u, i, t in after])
    s.close()
    return bundle, url, after


def test_retrain_accepts_a_fair_candidate_and_records_both_scores(served, tmp_path):
    bundle, url, after = served
    res = retrain(bundle, url, tmp_path / "new", event_types=EventTypes(), secret=SECRET)
    assert res.accepted and res.written == tmp_path / "new"
    metrics = json.loads((tmp_path / "new" / "metrics.json").read_text())["retrain"]
    assert metrics["current"]["NDCG@10"] == pytest.approx(res.current["NDCG@10"])
    assert metrics["candidate"]["NDCG@10"] == pytest.approx(res.candidate["NDCG@10"])
    assert metrics["current"]["cases"] == metrics["candidate"]["cases"] == res.current["cases"] > 50
    # the candidate knows the items launched after the cut-off: it must beat the model that does not
    assert res.candidate["NDCG@10"] > res.current["NDCG@10"] + 0.01
    assert res.counts["new_items"] == 20
    new = Recommender.load(tmp_path / "new")
    info = json.loads((tmp_path / "new" / "config.json").read_text())["info"]
    assert info["last_event_id"] == len(after) and info["event_store_id"]
    # the bundle's histories hold every event, the held-out ones included, exactly once
    assert new.train_data_.n_interactions == Recommender.load(bundle).train_data_.n_interactions + len(after)
    assert new.get_params() == Recommender.load(bundle).get_params()  # the bundle's own hyperparameters


def test_guard_refuses_a_broken_candidate(served, tmp_path):
    import torch

    bundle, url, _ = served

    def sabotage(model):
        model.weights_ = -model.weights_  # ranks the likeliest items last

    res = retrain(bundle, url, tmp_path / "new", event_types=EventTypes(), secret=SECRET, candidate_hook=sabotage)
    assert not res.accepted and res.written is None
    assert res.candidate["NDCG@10"] < res.current["NDCG@10"] - res.tolerance
    assert not (tmp_path / "new").exists()
    assert "refused" in res.summary() and "current" in res.summary()
    assert torch.is_tensor(Recommender.load(bundle).weights_)


def test_retrain_in_place_keeps_the_previous_bundle(served):
    from attnrec.data.catalogue import read_catalogue

    bundle, url, _ = served
    (bundle / "items.csv").write_text("item_id,name,category\ni1,One,c1\ni2,Two,c2\n")
    before = (bundle / "config.json").read_text()
    res = retrain(bundle, url, bundle, event_types=EventTypes(), secret=SECRET)
    assert res.accepted
    assert {k: (e.name, e.category) for k, e in read_catalogue(bundle).items()} == {"i1": ("One", "c1"),
                                                                                 "i2": ("Two", "c2")}
    assert (bundle.with_name(bundle.name + ".previous") / "config.json").read_text() == before
    assert json.loads((bundle / "config.json").read_text())["info"]["last_event_id"] > 0
    assert not [p for p in bundle.parent.iterdir() if ".tmp-" in p.name]  # no temporary left behind


def test_second_round_reads_only_later_events(served, tmp_path):
    bundle, url, after = served
    retrain(bundle, url, tmp_path / "r1", event_types=EventTypes(), secret=SECRET)
    s = EventStore(url)
    s.add_events([{"user_id": "u0", "item_id": after[0][1], "ts": 2e9, "event_type": None},
                  {"user_id": "u0", "item_id": after[1][1], "ts": 2e9 + 1, "event_type": None}])
    s.close()
    r2 = retrain(tmp_path / "r1", url, tmp_path / "r2", event_types=EventTypes(), secret=SECRET)
    assert r2.counts["stored_events"] == 2 and r2.current["cases"] == 1
    n1 = Recommender.load(tmp_path / "r1").train_data_.n_interactions
    assert Recommender.load(tmp_path / "r2").train_data_.n_interactions == n1 + 2


def test_nothing_new_is_a_clear_error(tmp_path, shop_split):
    data, _ = shop_split
    bundle = EASE(l2=10.0).fit(data).save(tmp_path / "current")
    with pytest.raises(ValueError, match="nothing to retrain on: no user has a new stored event"):
        retrain(bundle, f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "new", event_types=EventTypes(),
                secret=SECRET)


def test_warm_start_moves_item_rows_by_raw_id(shop_split):
    import torch

    from attnrec.models.sasrec import SASRec

    data, _ = shop_split
    kw = dict(d_model=16, n_layers=1, n_heads=1, max_len=10, epochs=1, batch_size=64, num_threads=1)
    m = SASRec(**kw).fit(data)
    raw = m.item_map_.raw_ids
    new_map = IdMap([raw[2], "brand-new", raw[0]], offset=1)
    new_data = SequenceData.from_lists([[1, 2, 3]], 3, item_map=new_map)
    fresh = SASRec(**kw)
    net = fresh.warm_start_from(m)._build_for_fit(new_data)
    w_old, w = m.net_.item_emb.weight.detach(), net.item_emb.weight.detach()
    assert w.shape == (4, 16)
    assert torch.equal(w[1], w_old[3]) and torch.equal(w[3], w_old[1]) and torch.equal(w[0], w_old[0])
    assert not torch.equal(w[2], torch.zeros(16))  # a new item keeps its fresh init
    assert torch.equal(net.pos_emb.weight.detach(), m.net_.pos_emb.weight.detach())
    assert fresh._build_for_fit(new_data) is not net and fresh._warm_from is None  # used once


def test_warm_start_needs_a_model_that_declares_it(served, tmp_path):
    bundle, url, _ = served
    with pytest.raises(ValueError, match="the ease model cannot be warm-started"):
        retrain(bundle, url, tmp_path / "new", warm_start=True, event_types=EventTypes(), secret=SECRET)


def test_export_streams_events_without_deleted_users(store, tmp_path):
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    add(store, ("u1", "a", 10.0, "view"), ("u2", "b", 11.0, "dislike"), ("u3", "c", 12.0, "purchase"))
    store.delete_user("u3")
    url = str(store.engine.url)
    counts = export_events(url, tmp_path / "ev.parquet", batch=1, event_types=TYPES, secret=SECRET)
    t = pq.read_table(tmp_path / "ev.parquet")
    assert t.column_names == ["user_id", "item_id", "timestamp", "event_type", "event_id"]
    assert t.column("user_id").to_pylist() == ["u1", "u2"] and counts["deleted_user_events"] == 0
    assert t.column("event_type").to_pylist() == ["view", "dislike"]
    export_events(url, tmp_path / "ev.csv", positives_only=True, event_types=TYPES, secret=SECRET)
    c = pcsv.read_csv(tmp_path / "ev.csv")
    assert c.column("user_id").to_pylist() == ["u1"] and c.column("timestamp").to_pylist() == [10.0]
    with pytest.raises(ValueError, match="must end in .parquet or .csv"):
        export_events(url, tmp_path / "ev.txt", secret=SECRET)


# ---- the commands ---------------------------------------------------------------------------------
def cli(*args):
    from typer.testing import CliRunner

    from attnrec.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_export_round_trips_through_train(store, tmp_path, suffix, monkeypatch):
    monkeypatch.setenv("ATTNREC_SECRET", SECRET.decode())
    # arrival order differs from event time: training must see time order
    add(store, ("u1", "b", 20.0, "view"), ("u1", "a", 10.0, "purchase"), ("u2", "a", 5.0, "view"),
        ("u2", "c", 6.0, "view"), ("u1", "c", 30.0, "view"), ("gone", "a", 1.0, "view"), ("gone", "b", 2.0, "view"))
    store.delete_user("gone")
    url = str(store.engine.url)
    r = cli("events", "export", "--db", url, "--out", tmp_path / f"ev.{suffix}")
    assert r.exit_code == 0, r.output
    assert "wrote 5 events" in r.output
    r = cli("train", tmp_path / f"ev.{suffix}", "--model", "pop", "--holdout", "none", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    m = Recommender.load(tmp_path / "b")
    assert sorted(m.user_map_.raw_ids) == ["u1", "u2"]
    assert user_log(m.train_data_, "u1") == ["a", "b", "c"] and user_log(m.train_data_, "u2") == ["a", "c"]
    u1 = m.user_map_.to_dense("u1")
    assert m.train_data_.timestamps[m.train_data_.indptr[u1]: m.train_data_.indptr[u1 + 1]].tolist() == [10, 20, 30]


def test_retrain_command_prints_both_figures_and_refuses_with_exit_1(served, tmp_path, monkeypatch):
    bundle, url, _ = served
    monkeypatch.chdir(tmp_path)
    r = cli("retrain", "--bundle", bundle, "--db", url, "--out", tmp_path / "new")
    assert r.exit_code == 2 and "no server secret: set ATTNREC_SECRET" in r.output
    monkeypatch.setenv("ATTNREC_SECRET", SECRET.decode())
    r = cli("retrain", "--bundle", bundle, "--db", url, "--out", tmp_path / "new", "--param", "l2=10")
    assert r.exit_code == 0, r.output
    assert "current 0." in r.output and "candidate 0." in r.output and "accepted" in r.output
    assert (tmp_path / "new" / "config.json").exists()
    # a candidate that ignores its input (l2 so large every item scores ~0: ties by id) is refused
    r = cli("retrain", "--bundle", bundle, "--db", url, "--out", tmp_path / "bad", "--param", "l2=1e12",
            "--tolerance", "0")
    assert r.exit_code == 1, r.output
    assert "refused" in r.output and not (tmp_path / "bad").exists()
    r = cli("retrain", "--bundle", bundle, "--db", url, "--out", tmp_path / "x", "--param", "depth=3")
    assert r.exit_code == 2 and "has no hyperparameter 'depth'" in r.output
    r = cli("retrain", "--bundle", bundle, "--db", url, "--out", tmp_path / "x", "--tolerance", "-1")
    assert r.exit_code == 2 and "tolerance must be a finite number >= 0" in r.output


def test_items_deleted_from_the_catalogue_leave_log_and_items_csv(store):
    from attnrec.continuous import merged_catalogue
    from attnrec.data.catalogue import CatalogueEntry

    add(store, ("u1", "c", 30.0, None), ("u2", "b", 31.0, None), ("u2", "new", 32.0, None))
    store.upsert_item("b", deleted=True)
    store.upsert_item("new", name="New Thing", categories=["gadgets"])
    view = StoreView(store)
    tlog = build_training_log(tiny_bundle(BASE), view, EventTypes())
    assert "b" not in tlog.data.item_map
    assert user_log(tlog.data, "u1") == ["a", "c"] and user_log(tlog.data, "u3") == ["c"]
    assert tlog.counts["deleted_item_events"] == 3  # u1's and u3's fit-time b, u2's stored b
    cat = merged_catalogue({"a": CatalogueEntry("A", "x", "about a"), "b": CatalogueEntry("B", None, None)},
                           view.catalogue_updates())
    assert cat == {"a": CatalogueEntry("A", "x", "about a"), "new": CatalogueEntry("New Thing", "gadgets", None)}


def test_failed_write_leaves_the_current_bundle_untouched(tmp_path, monkeypatch):
    from attnrec.continuous import write_bundle_atomically

    m = tiny_bundle(BASE)
    out = m.save(tmp_path / "b")
    before = (out / "config.json").read_text()

    def broken_save(path, metrics=None, info=None):
        (Path(path) / "weights.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(m, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_bundle_atomically(m, out, {}, {})
    assert (out / "config.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary directory, no .previous


def test_bundle_erasures_written_with_another_secret_are_refused(served, tmp_path):
    from attnrec.serving.erasure import write_erasures

    bundle, url, _ = served
    write_erasures(bundle, b"some-other-secret", {"ab" * 32})
    with pytest.raises(ValueError, match="written with a different server secret"):
        retrain(bundle, url, tmp_path / "new", event_types=EventTypes(), secret=SECRET)
