"""DIN target-attention ranker and the two-stage pipeline."""

import numpy as np
import pytest
import torch

from attnrec.evaluation import evaluate
from attnrec.models.base import Recommender
from attnrec.models.din import DINNet, TwoStage, pad_left


def test_activation_unit_matches_the_concatenated_form():
    torch.manual_seed(0)
    net = DINNet(30, d=8, max_len=6, att_hidden=5, mlp_hidden=(16,), dropout=0.0).eval()
    hist = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 0, 7]])
    cand = torch.tensor([[1, 2, 9], [4, 7, 8]])
    logits, w = net(hist, cand)
    assert logits.shape == (2, 3) and w.shape == (2, 3, 6)
    # reference: the MLP applied to the explicit [h, c, h-c, h*c] concatenation
    table = net.item_table()
    pos = net.pos_emb(torch.arange(5, -1, -1))
    h = (table[hist] + pos) * (hist > 0)[..., None]
    c = table[cand]
    H = h[:, None].expand(-1, 3, -1, -1)
    C = c[:, :, None].expand(-1, -1, 6, -1)
    e = net.att2(torch.relu(net.att1(torch.cat([H, C, H - C, H * C], -1)))).squeeze(-1)
    e = e.masked_fill(~(hist > 0)[:, None], float("-inf"))
    torch.testing.assert_close(w, torch.softmax(e, -1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3))
    assert (w[1, :, :5] == 0).all()  # padding gets no weight


def test_empty_history_is_finite():
    net = DINNet(10, d=8, max_len=4, att_hidden=4, mlp_hidden=(8,)).eval()
    logits, w = net(torch.zeros(2, 4, dtype=torch.long), torch.tensor([[1, 2], [3, 4]]))
    assert torch.isfinite(logits).all() and (w == 0).all()


def test_pad_left_keeps_most_recent_last():
    out = pad_left([np.array([1, 2, 3, 4]), np.array([5])], 3)
    assert out.tolist() == [[2, 3, 4], [0, 0, 5]]


@pytest.fixture(scope="module")
def fitted(small_synthetic):
    from attnrec.data.splits import leave_one_out
    from attnrec.pipeline import fit_for_test

    split = leave_one_out(small_synthetic.to_sequences())
    model = TwoStage(first_stage="ease", first_stage_params={"l2": 50.0}, n_candidates=20,
                     d_model=16, max_len=10, att_hidden=8, mlp_hidden=[32], epochs=2,
                     train_positions=3, train_negatives=10, num_threads=1)
    fit_for_test(model, split)
    return split, model


def test_two_stage_keeps_full_ranking_semantics(fitted):
    split, model = fitted
    hist = split.test.histories()[:16]
    users = split.test.users[:16]
    s = model.score(hist, users)
    assert s.shape == (16, model.n_items_ + 1) and s[:, 0].eq(float("-inf")).all()
    first = model.first_.score(hist, users)
    _, cand, _ = model.candidates(hist, users)
    for b in range(16):
        row, c = s[b], cand[b][cand[b] > 0]
        others = torch.ones(model.n_items_ + 1, dtype=torch.bool)
        others[0] = False
        others[c] = False
        # reranked candidates above everything else ...
        assert row[c].min() > row[others].max()
        # ... and the rest in first-stage order
        o = torch.nonzero(others).squeeze(1)
        assert torch.equal(torch.argsort(row[o], stable=True), torch.argsort(first[b, o], stable=True))
    r = evaluate(model, split.test, ks=(10,))
    assert 0.0 <= r["NDCG@10"] <= 1.0
    assert model.blend_ in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, float("inf"))


def test_explain_gives_attention_over_history(fitted):
    split, model = fitted
    h = split.test.history(0)
    item = int(split.test.targets(0)[0])
    ex = model.explain(h, item)
    assert len(ex["weights"]) == min(len(h), model.max_len)
    assert abs(sum(ex["weights"]) - 1.0) < 1e-5
    assert set(ex["top"]) <= set(ex["history"])


def test_bundle_round_trip(fitted, tmp_path):
    split, model = fitted
    model.save(tmp_path / "b")
    loaded = Recommender.load(tmp_path / "b")
    hist = split.test.histories()[:8]
    torch.testing.assert_close(loaded.score(hist, split.test.users[:8]),
                               model.score(hist, split.test.users[:8]))


def test_ranker_learns_the_planted_accessory_rule(small_synthetic):
    """After a product, its accessory should be reranked to the top (the attention's job)."""
    data = small_synthetic.to_sequences()
    model = TwoStage(first_stage="pop", n_candidates=80, d_model=16, max_len=5, att_hidden=8,
                     mlp_hidden=[32], epochs=6, lr=3e-3, train_positions=6, train_negatives=20,
                     batch_size=32,
                     blend=0.0, num_threads=1).fit(data)
    imap = data.item_map
    rules = [(imap.get(p), imap.get(a)) for p, a in small_synthetic.rules.items()
             if p in imap and a in imap]
    hist = [np.array([p]) for p, _ in rules]
    ids, _ = model.recommend(hist, k=5)
    hit = np.mean([a in row for (_, a), row in zip(rules, ids)])
    pop_ids, _ = model.first_.recommend(hist, k=5)
    pop_hit = np.mean([a in row for (_, a), row in zip(rules, pop_ids)])
    assert hit > pop_hit + 0.3, (hit, pop_hit)
