"""Baselines against hand computations and closed forms."""

import numpy as np
import pytest
import torch

from attnrec.data.dataset import SequenceData
from attnrec.evaluation import evaluate
from attnrec.data.splits import leave_one_out
from attnrec.models import EASE, ItemKNN, MostPopular


def _data():
    # 4 users, 4 items
    return SequenceData.from_lists([[1, 2], [1, 2, 3], [2, 3], [4, 1]], 4)


def test_most_popular_orders_by_count_then_newest():
    # counts: 1 -> 3, 2 -> 3, 3 -> 2, 4 -> 1; item 2 first seen after item 1 -> wins the tie
    model = MostPopular().fit(_data())
    ids, _ = model.recommend([np.array([], dtype=np.int64)], k=4)
    assert ids[0].tolist() == [2, 1, 3, 4]
    ids, _ = model.recommend([np.array([2])], k=2)
    assert ids[0].tolist() == [1, 3]


def test_ease_matches_float64_closed_form():
    data = _data()
    X = np.zeros((4, 4))
    for u, s in enumerate(data.sequences()):
        X[u, s - 1] = 1
    lam = 0.5
    P = np.linalg.inv(X.T @ X + lam * np.eye(4))
    B = -P / np.diag(P)[None, :]
    np.fill_diagonal(B, 0)
    model = EASE(l2=lam).fit(data)
    hist = [np.array([1, 3])]
    expected = X[[0]] * 0
    expected = (np.array([[1, 0, 1, 0]]) @ B)[0]
    got = model.score(hist)[0, 1:].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="l2 > 0"):
        EASE(l2=0).fit(data)


def test_itemknn_cosine_and_pearson_hand_computed():
    data = _data()
    X = np.zeros((4, 5))
    for u, s in enumerate(data.sequences()):
        X[u, s] = 1
    cos = ItemKNN(k_neighbors=10, similarity="cosine").fit(data)
    # cosine(1, 2) = co-occurrence 2 / sqrt(3 * 3)
    s = cos.score([np.array([1])])[0]
    assert s[2].item() == pytest.approx(2 / 3, rel=1e-5)
    assert s[4].item() == pytest.approx(1 / np.sqrt(3 * 1), rel=1e-5)
    pear = ItemKNN(k_neighbors=10, similarity="pearson").fit(data)
    c = X - X.mean(0)
    expected = c[:, 1] @ c[:, 4] / np.sqrt((c[:, 1] @ c[:, 1]) * (c[:, 4] @ c[:, 4]))
    assert pear.score([np.array([1])])[0, 4].item() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="cosine.*pearson"):
        ItemKNN(similarity="jaccard").fit(data)


def test_itemknn_keeps_only_k_neighbours():
    data = _data()
    model = ItemKNN(k_neighbors=1).fit(data)
    s = model.score([np.array([1])])[0, 1:]
    assert (s > 0).sum().item() == 1


def test_ease_beats_popularity_on_synthetic_patterns(small_synthetic):
    split = leave_one_out(small_synthetic.to_sequences())
    pop = evaluate(MostPopular().fit(split.train_full), split.test)["NDCG@10"]
    ease = evaluate(EASE(l2=50).fit(split.train_full), split.test)["NDCG@10"]
    assert ease > 2 * pop
