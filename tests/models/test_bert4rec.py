"""BERT4Rec: learns planted rules, masks are handled, attention is bidirectional, bundles round-trip."""

import numpy as np
import pytest
import torch

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.data.splits import leave_one_out
from attnrec.data.synthetic import generate
from attnrec.evaluation import evaluate
from attnrec.models.base import Recommender
from attnrec.models.baselines import MostPopular
from attnrec.models.batching import cloze_windows
from attnrec.models.bert4rec import BERT4Rec, cloze_mask, pad_right_with_mask
from attnrec.pipeline import fit_for_test

FAST = dict(d_model=32, n_heads=2, n_layers=2, max_len=20, dropout=0.1, batch_size=64, lr=3e-3, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest (and much faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shop():
    """Synthetic shop: 400 training users, 150 unseen users to probe the planted rules."""
    syn = generate(n_users=550, n_items=60, seed=3)
    seqs = syn.to_sequences()
    all_seqs = seqs.sequences()
    train = SequenceData.from_lists(all_seqs[:400], seqs.n_items)
    rules = {seqs.item_map.to_dense(p): seqs.item_map.to_dense(a) for p, a in syn.rules.items()
             if p in seqs.item_map and a in seqs.item_map}
    hists, targets = [], []
    for s in all_seqs[400:]:  # every product occurrence whose accessory is still unseen
        for i in range(1, len(s)):
            a = rules.get(int(s[i]))
            if a is not None and a not in s[: i + 1]:
                hists.append(s[: i + 1])
                targets.append([a])
    probe = EvalSet.from_lists(np.arange(len(hists)), hists, targets, name="probe")
    return train, probe


@pytest.fixture(scope="module")
def trained(shop) -> BERT4Rec:
    return BERT4Rec(**FAST, epochs=40).fit(shop[0])


def test_learns_planted_rules_well_above_chance_and_popularity(trained, shop):
    train, probe = shop
    assert len(probe) > 200
    res = evaluate(trained, probe, ks=(10,))
    pop = evaluate(MostPopular().fit(train), probe, ks=(10,))
    chance = 10 / train.n_items
    assert res["HR@10"] > 3 * chance, res.metrics  # ~0.8 vs 0.17
    assert res["NDCG@10"] > 2 * pop["NDCG@10"], (res.metrics, pop.metrics)  # ~0.6 vs 0.19


def test_score_contract_mask_never_scored(trained, shop):
    n = shop[0].n_items
    net = trained.net_
    assert net.item_emb.num_embeddings == n + 2 and net.mask_id == n + 1  # [MASK] is an input token only
    hs = [np.array([1, 25]), np.array([], dtype=np.int64), np.arange(1, 41)]
    s = trained.score(hs)
    assert s.shape == (3, n + 1) and s.dtype == torch.float32  # no column for [MASK]
    assert torch.isneginf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()  # padding never recommended
    ids, _ = trained.recommend(hs, k=n + 3)
    assert ids.max() <= n and (ids[0] == 0).sum() == 3 + 2  # only padding fill, never id n+1


def test_inference_appends_mask_to_last_max_len_minus_one_items():
    seq, lens = pad_right_with_mask([np.arange(1, 31), np.array([7]), np.array([], dtype=np.int64)], 20, 99)
    assert seq.shape == (3, 20) and lens.tolist() == [19, 1, 0]
    assert seq[0].tolist() == list(range(12, 31)) + [99]
    assert seq[1, :2].tolist() == [7, 99] and (seq[1, 2:] == 0).all()
    assert seq[2, 0] == 99 and (seq[2, 1:] == 0).all()


def test_cloze_masks_only_real_positions():
    rng = np.random.default_rng(0)
    lens = rng.integers(1, 12, size=500)
    m = cloze_mask(lens, 12, mask_prob=0.3, last_mask_prob=0.2, rng=rng)
    real = np.arange(12)[None, :] < lens[:, None]
    assert not (m & ~real).any(), "padding must never be a target"
    assert m.any(1).all(), "every window has a target"
    assert 0.25 < m.sum() / real.sum() < 0.4
    last_only = m.sum(1) == 1
    assert m[np.arange(500), lens - 1][last_only].mean() > 0.5  # mostly the last-item samples
    m1 = cloze_mask(lens, 12, mask_prob=0.3, last_mask_prob=1.0, rng=rng)
    assert (m1.sum(1) == 1).all() and m1[np.arange(500), lens - 1].all()


def test_windows_cover_every_item_once():
    data = SequenceData.from_lists([[1, 2], [3], list(range(1, 13))], 20)
    starts, lens = cloze_windows(data, max_len=5)
    pos = sorted(int(s + i) for s, n in zip(starts, lens) for i in range(n))
    # flat positions: user 0 -> 0,1; user 1 (one item, no context) dropped; user 2 -> 3..14 (windows 5,5,2)
    assert pos == [0, 1] + list(range(3, 15)) and lens.max() <= 5 and lens.min() >= 2


def test_attention_is_bidirectional(trained):
    net = trained.net_.eval()
    M = net.mask_id
    base = torch.tensor([[3, 30, M, 41, 12, M, 25]])
    with torch.no_grad():
        h = net(base)
        earlier = base.clone()
        earlier[0, 1] = 7  # perturb an item *before* the mask at position 5
        later = base.clone()
        later[0, 3] = 50  # perturb an item *after* the mask at position 2
        h_e, h_l = net(earlier), net(later)
    assert not torch.allclose(h[0, 5], h_e[0, 5], atol=1e-5), "later mask must see earlier items"
    assert not torch.allclose(h[0, 2], h_l[0, 2], atol=1e-5), "earlier mask must see later items"


def test_padding_does_not_change_scores(trained):
    short = np.array([5, 17, 33])
    alone = trained.score([short])
    batched = trained.score([short, np.arange(1, 50)])  # padded to the long history
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_attention_weights_explain_mask_position(trained):
    w, lens = trained.attention_weights([np.array([1, 25, 11]), np.arange(1, 40)])
    assert len(w) == 2 and w[0].shape == (2, 2, 20, 20) and lens.tolist() == [3, 19]
    assert torch.allclose(w[-1][0, :, :4, :4].sum(-1), torch.ones(2, 4), atol=1e-5)  # 3 items + mask
    assert (w[-1][0, :, :4, 4:] == 0).all(), "padding keys get no weight"
    e = trained.explain_weights(np.array([1, 25, 11]), item=5)
    assert e.shape == (3,) and e.min() >= 0 and e.sum() == pytest.approx(1.0)


def test_save_load_round_trip_identical_scores(trained, tmp_path):
    trained.save(tmp_path / "b")
    loaded = Recommender.load(tmp_path / "b")
    assert isinstance(loaded, BERT4Rec)
    hs = [np.array([1, 30, 22]), np.array([5]), np.array([], dtype=np.int64), np.arange(1, 45)]
    assert torch.equal(trained.score(hs), loaded.score(hs))
    assert loaded.history_ == trained.history_


def test_refit_params_through_fit_for_test(small_synthetic):
    split = leave_one_out(small_synthetic.to_sequences())
    m = BERT4Rec(**{**FAST, "d_model": 16}, epochs=6, patience=2)
    assert fit_for_test(m, split) is m
    best = m.validation_["best_epoch"]
    assert 1 <= best <= 6 and m.validation_["best_metric"] == max(
        h["NDCG@10"] for h in m.validation_["history"])
    assert m.epochs == best and m.patience is None  # refitted for the chosen epoch count
    assert m.epochs_run_ == best and len(m.history_) == best
    assert m.train_data_ is split.train_full
    assert m.score([split.test.history(0)]).shape == (1, split.train_full.n_items + 1)


def cycles(n_users: int = 300, n_items: int = 30, seed: int = 0) -> SequenceData:
    """Each user walks the same cycle 1, 2, ..., n_items from a random start: easy to fill in."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_users)
    return SequenceData.from_lists([[(s + i) % n_items + 1 for i in range(10)] for s in starts], n_items)


@pytest.mark.parametrize("opts", [dict(loss="sampled_softmax", n_negatives=16), dict(bf16=True, pre_ln=False)])
def test_options_train(opts):
    m = BERT4Rec(**{**FAST, "dropout": 0.0, "batch_size": 32}, epochs=20, **opts).fit(cycles())
    losses = [h["loss"] for h in m.history_]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    assert torch.isfinite(m.score([np.array([1, 2, 3])])[:, 1:]).all()


def test_crop_last_only_moves_the_mask_to_a_random_prefix_end():
    from attnrec.models.bert4rec import crop_last_only

    rng = np.random.default_rng(0)
    lens = np.array([5, 6, 3])
    T = 6
    seq = np.where(np.arange(T)[None, :] < lens[:, None], np.arange(1, T + 1)[None, :] + 10, 0)
    m = np.zeros((3, T), bool)
    m[0, 4] = True  # last-only
    m[1, [1, 5]] = True  # two masks: left alone
    m[2, 2] = True  # last-only
    before = seq.copy()
    news = []
    for _ in range(50):
        s2, m2 = before.copy(), m.copy()
        crop_last_only(s2, m2, lens, rng)
        n0 = int((s2[0] > 0).sum())
        assert 2 <= n0 <= 5 and m2[0].sum() == 1 and m2[0, n0 - 1]  # mask at the new last item
        assert (s2[0, :n0] == before[0, :n0]).all()  # a prefix of the original window
        assert (s2[1] == before[1]).all() and (m2[1] == m[1]).all()
        news.append(n0)
    assert set(news) == {2, 3, 4, 5}  # every prefix length is drawn
