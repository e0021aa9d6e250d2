"""FAISS retrieval: exact agreement, exclusions never cost results, ANN recall, model integration."""

import numpy as np
import pytest
import torch

pytest.importorskip("faiss")

from attnrec.retrieval import AUTO_EXACT_MAX_ITEMS, ItemIndex, choose_kind, recommend  # noqa: E402


def vectors(n=3000, d=16, seed=0, clusters=None):
    rng = np.random.default_rng(seed)
    if clusters:  # embeddings of trained models are clustered, not isotropic
        centres = rng.normal(size=(clusters, d))
        X = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, d))
    else:
        X = rng.normal(size=(n, d))
    X = np.concatenate([np.zeros((1, d)), X]).astype(np.float32)  # row 0 = padding
    return X


def exact_topk(X, q, k, banned=(), allowed=None):
    s = X @ q
    s[0] = -np.inf
    s[list(banned)] = -np.inf
    if allowed is not None:
        s[~allowed] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))[:k]
    return order[np.isfinite(s[order])]


def test_choose_kind():
    assert choose_kind(1000) == "exact"
    assert choose_kind(AUTO_EXACT_MAX_ITEMS + 1) == "ivf"
    assert choose_kind(10, "ivf") == "ivf"
    with pytest.raises(ValueError):
        choose_kind(10, "annoy")


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
def test_history_covering_most_top_items_still_gives_k(kind):
    X = vectors()
    rng = np.random.default_rng(1)
    Q = rng.normal(size=(4, X.shape[1])).astype(np.float32)
    index = ItemIndex.build(X, kind, nprobe=2)  # few IVF lists probed: filtering must re-query/fall back
    k = 10
    banned = []
    for q in Q:  # each history covers that user's 2900 best items of 3000
        banned.append(exact_topk(X, q, 2900))
    ids, sc = index.search(Q, k, exclude=banned)
    for b, q in enumerate(Q):
        assert (ids[b] > 0).all(), "fewer than k results although 100 admissible items exist"
        assert not np.isin(ids[b], banned[b]).any()
        np.testing.assert_array_equal(ids[b], exact_topk(X, q, k, banned[b]))
        np.testing.assert_allclose(sc[b], X[ids[b]] @ q, rtol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_fewer_admissible_than_k_pads(kind):
    X = vectors(n=200)
    q = np.random.default_rng(2).normal(size=(1, X.shape[1])).astype(np.float32)
    banned = [np.arange(1, 196)]  # 5 items left
    ids, sc = ItemIndex.build(X, kind).search(q, 10, exclude=banned)
    assert sorted(ids[0, :5]) == [196, 197, 198, 199, 200]
    assert (ids[0, 5:] == 0).all() and np.isneginf(sc[0, 5:]).all()


def test_allowed_mask_and_exact_agreement():
    X = vectors(n=2000)
    rng = np.random.default_rng(3)
    Q = rng.normal(size=(8, X.shape[1])).astype(np.float32)
    allowed = np.zeros(len(X), bool)
    allowed[rng.choice(np.arange(1, len(X)), 60, replace=False)] = True  # a narrow category filter
    ids, _ = ItemIndex.build(X, "exact").search(Q, 10, allowed=allowed)
    for b, q in enumerate(Q):
        np.testing.assert_array_equal(ids[b], exact_topk(X, q, 10, allowed=allowed))
    # approximate: always k admissible items, nearly all of them the exact ones
    ids, _ = ItemIndex.build(X, "hnsw").search(Q, 10, allowed=allowed)
    assert (ids > 0).all() and allowed[ids].all()
    hits = [len(set(ids[b]) & set(exact_topk(X, q, 10, allowed=allowed))) for b, q in enumerate(Q)]
    assert np.mean(hits) >= 9


def test_hnsw_recall_on_clustered_vectors():
    X = vectors(n=20000, d=32, clusters=200, seed=4)
    Q = np.random.default_rng(5).normal(size=(200, 32)).astype(np.float32)
    exact, _ = ItemIndex.build(X, "exact").search(Q, 10)
    ann, _ = ItemIndex.build(X, "hnsw").search(Q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann, exact)])
    assert recall >= 0.95


def test_model_recommend_through_index_matches_full_scoring(small_synthetic, tmp_path):
    from attnrec.data.preprocess import build_sequences
    from attnrec.models import EASE, SASRec
    from attnrec.retrieval import build_index

    data, _ = build_sequences(small_synthetic.log)
    m = SASRec(d_model=16, n_layers=1, n_heads=1, max_len=20, epochs=1, seed=0, num_threads=1).fit(data)
    histories = [m.user_history(u) for u in range(50)] + [np.zeros(0, np.int64)]
    want_ids, want_sc = m.recommend(histories, k=10)
    index = build_index(m, "exact")
    got_ids, got_sc = recommend(m, histories, k=10, index=index)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_sc, want_sc, rtol=1e-4, atol=1e-5)
    assert build_index(EASE().fit(data)) is None  # no vectors: exact path
    # round trip through a file
    index.save(tmp_path / "index.faiss")
    again = ItemIndex.load(tmp_path / "index.faiss", index.vectors, "exact")
    np.testing.assert_array_equal(recommend(m, histories, k=10, index=again)[0], want_ids)


def test_service_snapshot_answers_from_the_index(small_synthetic, tmp_path):
    from attnrec.data.preprocess import build_sequences
    from attnrec.models import SASRec
    from attnrec.serving.engine import load_snapshot

    data, _ = build_sequences(small_synthetic.log)
    SASRec(d_model=16, n_layers=1, n_heads=1, max_len=20, epochs=1, num_threads=1).fit(data).save(tmp_path / "b")
    exact = load_snapshot(tmp_path / "b")  # 80 items: auto = score every item
    assert exact.index is None
    snap = load_snapshot(tmp_path / "b", index="hnsw")
    assert snap.index.kind == "hnsw" and list((tmp_path / "b").glob("index-hnsw-*.faiss"))
    assert load_snapshot(tmp_path / "b", index="hnsw").index.kind == "hnsw"  # from the cached file
    for u in range(30):
        h = snap.model.user_history(u)
        excl = np.arange(1, 61)  # most of the catalogue excluded on top of the history
        want = exact.rank(exact.score(h), 10, h, excl, None)
        got = snap.retrieve(h, 10, h, excl, None)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
