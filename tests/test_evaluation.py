"""Metric code against hand-computed examples; batching; exclusion; sampled labelling."""

import math

import numpy as np
import pytest
import torch

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.evaluation import evaluate, metrics_from_ranks, ranks_of_targets
from attnrec.models.base import Recommender


class FixedScores(Recommender):
    """Scores every history with one fixed row (test double with known rankings)."""

    model_name = "fixed"

    def __init__(self, row=None):
        self.row = row

    def _fit(self, data, valid=None, metric=None):
        pass

    def score(self, histories, users=None):
        r = torch.tensor(self.row, dtype=torch.float32)
        r[0] = float("-inf")
        return r.expand(len(histories), -1).clone()


def _fitted(row, n_items):
    data = SequenceData.from_lists([[1, 2], [3]], n_items)
    return FixedScores(row).fit(data)


def test_ranks_hand_computed_with_ties_broken_by_lower_id():
    scores = torch.tensor([[-math.inf, 0.5, 0.9, 0.5, 0.1]])
    # order: 2 (0.9), 1 (0.5, lower id), 3 (0.5), 4 (0.1)
    r = ranks_of_targets(scores, [np.array([2, 1, 3, 4])])[0]
    assert r.tolist() == [1, 2, 3, 4]


def test_masked_target_gets_infinite_rank():
    scores = torch.tensor([[-math.inf, 0.5, -math.inf, 0.1]])
    r = ranks_of_targets(scores, [np.array([2])])[0]
    assert np.isinf(r[0])


def test_metrics_single_target_hand_computed():
    per = metrics_from_ranks([np.array([1.0]), np.array([3.0]), np.array([11.0])], ks=[10])
    assert per["HR@10"].tolist() == [1, 1, 0]
    assert per["NDCG@10"] == pytest.approx([1.0, 1 / math.log2(4), 0.0])
    assert per["MRR@10"] == pytest.approx([1.0, 1 / 3, 0.0])
    assert per["Recall@10"].tolist() == [1, 1, 0]


def test_metrics_multi_target_hand_computed():
    # targets at ranks 2 and 5 of 3 targets (third outside K=5)
    per = metrics_from_ranks([np.array([2.0, 5.0, 9.0])], ks=[5])
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert per["NDCG@5"][0] == pytest.approx(dcg / idcg)
    assert per["Recall@5"][0] == pytest.approx(2 / 3)
    assert per["HR@5"][0] == 1
    assert per["MRR@5"][0] == pytest.approx(0.5)


def test_evaluate_end_to_end_hand_computed_and_history_exclusion():
    n_items = 5
    # ranking by score: 5,4,3,2,1
    model = _fitted([0, 0.1, 0.2, 0.3, 0.4, 0.5], n_items)
    ev = EvalSet.from_lists([0, 1], histories=[[5], [1]], targets=[[4], [3]])
    res = evaluate(model, ev, ks=[1, 2])
    # case 0: 5 excluded -> 4 is rank 1; case 1: 5,4,3 -> 3 is rank 3
    assert res["HR@1"] == pytest.approx(0.5)
    assert res["NDCG@2"] == pytest.approx(0.5)
    kept = evaluate(model, ev, ks=[1, 2], exclude_history=False)
    # case 0: 5,4 -> rank 2
    assert kept["HR@1"] == 0.0
    assert kept["NDCG@2"] == pytest.approx(0.5 * (1 / math.log2(3)))
    assert "history items kept" in kept.protocol


def test_target_in_history_cannot_be_hit_when_excluded():
    model = _fitted([0, 1, 0, 0, 0, 0], 5)
    ev = EvalSet.from_lists([0], histories=[[1]], targets=[[1]])
    assert evaluate(model, ev, ks=[5])["HR@5"] == 0.0
    assert evaluate(model, ev, ks=[5], exclude_history=False)["HR@5"] == 1.0


def test_coverage_and_avg_popularity():
    data = SequenceData.from_lists([[1, 1, 2], [1, 3]], 4)  # counts: 1->3, 2->1, 3->1, 4->0
    model = FixedScores([0, 0.4, 0.3, 0.2, 0.1]).fit(data)
    ev = EvalSet.from_lists([0, 1], histories=[[], [1]], targets=[[1], [2]])
    res = evaluate(model, ev, ks=[1])
    # top-1: case 0 -> item 1, case 1 -> item 2
    assert res["Coverage@1"] == pytest.approx(2 / 4)
    assert res["AvgPop@1"] == pytest.approx((3 + 1) / 2)


def test_results_identical_whatever_the_batch_size():
    rng = np.random.default_rng(0)
    n_items = 50
    row = rng.random(n_items + 1).round(2)  # rounding creates ties on purpose
    model = _fitted(row.tolist(), n_items)
    hist = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, 6), replace=False) for _ in range(97)]
    targ = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 4), replace=False) for _ in range(97)]
    ev = EvalSet.from_lists(np.arange(97), hist, targ)
    results = [evaluate(model, ev, ks=[1, 5, 10], batch_size=b).metrics for b in (1, 7, 32, 1000)]
    for other in results[1:]:
        assert other == results[0]


def test_per_case_ranks_stay_in_case_order_although_batches_follow_history_length():
    n_items = 6
    model = _fitted([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], n_items)  # ranking 6,5,4,3,2,1
    # long, empty, short histories interleaved: batches of 2 regroup them by length
    hist = [[6, 5, 4], [], [6], [6, 5], []]
    targ = [[1], [6], [4], [1], [1]]
    ev = EvalSet.from_lists(np.arange(5), hist, targ)
    res = evaluate(model, ev, ks=[10], batch_size=2, per_case=True)
    # case 0: 3 excluded items above -> item 1 is rank 3; case 1: rank 1; case 2: 5 excluded -> 4 is
    # rank 2; case 3: rank 4; case 4: rank 6
    expected = [1 / math.log2(r + 1) for r in (3, 1, 2, 4, 6)]
    assert res.per_case["NDCG@10"].tolist() == pytest.approx(expected)
    lean = evaluate(model, ev, ks=[10], batch_size=2, beyond_accuracy=False)
    assert lean["NDCG@10"] == res["NDCG@10"]
    assert "Coverage@10" in res.metrics and "Coverage@10" not in lean.metrics


def test_sampled_metrics_are_labelled_and_differ_from_full():
    model = _fitted([0] + list(np.linspace(1, 0, 100)), 100)
    ev = EvalSet.from_lists([0] * 20, [[]] * 20, [[20]] * 20)
    full = evaluate(model, ev, ks=[10])
    sampled = evaluate(model, ev, ks=[10], sampled_negatives=20, seed=1)
    assert all("sampled" in k for k in sampled.metrics)
    assert "SAMPLED" in sampled.protocol
    assert full["HR@10"] == 0.0  # rank 20 of 100
    # about 4 of 20 random negatives outrank it
    assert sampled.metrics["HR@10 (sampled, 20 negatives)"] > 0.8


def test_bad_arguments():
    model = _fitted([0, 1, 2], 2)
    with pytest.raises(ValueError, match="no cases"):
        evaluate(model, EvalSet.from_lists([], [], []))
    with pytest.raises(ValueError, match="positive"):
        evaluate(model, EvalSet.from_lists([0], [[1]], [[2]]), ks=[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        evaluate(FixedScores([0, 1]), EvalSet.from_lists([0], [[1]], [[2]]))
