"""Attention explanations: weights sum to 1, point at the planted trigger, are faithful."""

import numpy as np
import pytest

from attnrec.explain import explain, faithfulness
from attnrec.models.sasrec import SASRec
from tests.models.test_sasrec import FAST, N_ITEMS, planted, probe_set


@pytest.fixture(scope="module")
def model() -> SASRec:
    # plain attention: with the low-pass branch the attention weights are only part of the story
    return SASRec(**FAST, epochs=25, mixer="none").fit(planted())


@pytest.mark.parametrize("method", ["rollout", "last"])
def test_weights_sum_to_one_and_point_at_trigger(model, method):
    probes = probe_set(50, seed=7)
    hits = 0
    for i in range(len(probes)):
        h = probes.history(i)  # [f, f, f, product, f] -> target accessory
        target = int(probes.targets(i)[0])
        ex = explain(model, h, target, method=method)
        assert [p for p, _, _ in ex] == list(range(len(h)))
        assert [it for _, it, _ in ex] == h.tolist()
        w = np.array([x for _, _, x in ex])
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        hits += int(np.argmax(w) == 3 and h[3] == target - 10)
    assert hits / len(probes) >= 0.8


def test_explain_only_covers_visible_window(model):
    h = np.arange(21, N_ITEMS + 1)  # 40 items > max_len 20
    ex = explain(model, h, 11)
    assert len(ex) == 20 and ex[0][0] == 20 and ex[-1][1] == N_ITEMS


def test_faithfulness_top_attended_removal_hurts_more(model):
    probes = probe_set(200, seed=9)
    res = faithfulness(model, probes.histories(), n=200)
    assert res["n"] == 200
    assert res["rate"] > 0.7, res


def test_faithfulness_uses_the_models_declared_explanation(monkeypatch):
    """Models with their own explanation (BERT4Rec's mask row, DIN) are judged by it, not by row n-1."""
    import numpy as np
    import torch

    from attnrec.explain import faithfulness
    from attnrec.models.base import Capability, Explanation

    class Stub:
        explain_method = "stub"

        def supports(self, capability):
            return capability is Capability.EXPLAIN

        def recommend(self, hs, k):
            return np.ones((len(hs), 1), dtype=np.int64), None

        def explain_items(self, histories, items, users=None):
            out = []
            for history, rec in zip(histories, items):
                w = np.zeros(len(history))
                w[0] = 1.0  # the oldest item is the one that matters
                out.append([Explanation.over("stub", history, np.arange(len(history)), w) for _ in rec])
            return out

        def score(self, hs):
            # item 1's score is the value of the history's first element
            return torch.tensor([[0.0, float(h[0])] for h in hs])

    hs = [np.array([5, 1, 1, 1]), np.array([7, 2, 2])]
    res = faithfulness(Stub(), hs, n=10)
    assert res["n"] == 2 and res["rate"] == 1.0


def test_explanations_are_per_recommended_item_and_more_faithful_than_rollout(model):
    """Each recommended item gets its own weights; per item, they beat the query-level rollout."""
    from attnrec.explain import explanations

    probes = probe_set(200, seed=9)
    h = probes.history(0)
    recs, _ = model.recommend([h], k=10)
    exps = explanations(model, [h], [recs[0]])[0]
    assert len({tuple(np.round(e.weights, 6)) for e in exps}) > 1, "every item got the same explanation"
    rollout = explanations(model, [h], [recs[0]], method="rollout")[0]
    assert len({tuple(np.round(e.weights, 6)) for e in rollout}) == 1  # what the service used to show
    own = faithfulness(model, probes.histories(), n=200, k=10)
    query = faithfulness(model, probes.histories(), n=200, method="rollout", k=10)
    assert own["n"] == query["n"] == 2000
    assert own["rate"] > 0.85 and own["rate"] > query["rate"] + 0.2, (own, query)


def test_two_stage_explanations_reach_explain_and_the_service(small_synthetic, tmp_path):
    """DIN's target attention is the two-stage model's declared explanation, everywhere."""
    from attnrec.models.din import TwoStage
    from attnrec.serving.engine import load_snapshot

    data = small_synthetic.to_sequences()
    two = TwoStage(first_stage="pop", n_candidates=30, d_model=16, max_len=5, att_hidden=8,
                   mlp_hidden=[16], epochs=1, train_positions=2, num_threads=1).fit(data)
    h = data.sequence(0)
    recs, _ = two.recommend([h], k=3)
    for item in recs[0]:
        ex = explain(two, h, int(item))
        want = two.explain(h, int(item))["weights"]  # the ranker's attention for that candidate
        np.testing.assert_allclose([w for _, _, w in ex], want, rtol=1e-5)
        assert [p for p, _, _ in ex] == list(range(len(h) - len(want), len(h)))
    snap = load_snapshot(two.save(tmp_path / "two"))
    method, because = snap.explain(h, recs[0])
    assert method == "target attention" and len(because) == 3
    top = [max(two.explain(h, int(i))["weights"]) for i in recs[0]]
    assert [b[0][2] for b in because] == pytest.approx(top, rel=1e-5)
