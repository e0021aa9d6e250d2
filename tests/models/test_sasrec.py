"""SASRec: learns planted sequential rules, every loss trains, bundles round-trip."""

import numpy as np
import pytest
import torch

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.evaluation import evaluate, validation_metric
from attnrec.models.base import Recommender
from attnrec.models.losses import fused_linear_cross_entropy
from attnrec.models.batching import training_windows
from attnrec.models.sasrec import SASRec

N_PRODUCTS = 10
N_ITEMS = 60  # products 1..10, accessories 11..20, fillers 21..60


def planted(n_users: int = 300, seed: int = 0, length: int = 9) -> SequenceData:
    """Each product p is followed, after one random filler, by its accessory p + 10."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        s: list[int] = []
        while len(s) < length:
            p = int(rng.integers(1, N_PRODUCTS + 1))
            s += [p, int(rng.integers(21, N_ITEMS + 1)), p + 10]
            s += list(rng.integers(21, N_ITEMS + 1, size=int(rng.integers(0, 2))))
        seqs.append(s[:length])
    return SequenceData.from_lists(seqs, N_ITEMS)


def probe_set(n: int = 200, seed: int = 1) -> EvalSet:
    """History ending with [product, filler] -> target the product's accessory."""
    rng = np.random.default_rng(seed)
    hists, targets = [], []
    for _ in range(n):
        p = int(rng.integers(1, N_PRODUCTS + 1))
        pre = list(rng.integers(21, N_ITEMS + 1, size=3))
        hists.append(pre + [p, int(rng.integers(21, N_ITEMS + 1))])
        targets.append([p + 10])
    return EvalSet.from_lists(np.arange(n), hists, targets, name="probe")


FAST = dict(d_model=32, n_heads=2, n_layers=2, max_len=20, dropout=0.1, batch_size=64, lr=5e-3, seed=0,
            num_threads=1)


@pytest.fixture(scope="module")
def trained() -> SASRec:
    return SASRec(**FAST, epochs=25).fit(planted())


def test_learns_planted_rule_well_above_chance(trained):
    res = evaluate(trained, probe_set(), ks=(1, 10))
    # chance is ~1/56 for HR@1
    assert res["HR@1"] > 0.6, res.metrics
    assert res["HR@10"] > 0.9


def test_score_contract(trained):
    s = trained.score([np.array([1, 25]), np.array([], dtype=np.int64), np.arange(1, 40)])
    assert s.shape == (3, N_ITEMS + 1) and s.dtype == torch.float32
    assert torch.isinf(s[:, 0]).all() and torch.isfinite(s[:, 1:]).all()
    w, lens = trained.attention_weights([np.array([1, 25, 11]), np.arange(21, 60)])
    assert len(w) == 2 and w[0].shape == (2, 2, 20, 20) and lens.tolist() == [3, 20]
    assert torch.allclose(w[-1][0, :, :3].sum(-1), torch.ones(2, 3), atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "sampled_softmax", "bce", "gbce"])
def test_each_loss_runs_and_decreases(loss):
    m = SASRec(**{**FAST, "dropout": 0.0}, loss=loss, n_negatives=16, epochs=6).fit(planted(150))
    losses = [h["loss"] for h in m.history_]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_popularity_sampled_softmax_and_options_run():
    m = SASRec(d_model=16, n_heads=1, n_layers=1, max_len=8, epochs=2, loss="sampled_softmax",
               negative_sampling="popularity", n_negatives=8, pre_ln=False, shared_embeddings=False,
               similarity="pearson", top_k=3, mixer="lowpass", bf16=True).fit(planted(60))
    assert torch.isfinite(m.score([np.array([1, 2, 3])])[:, 1:]).all()


def test_fused_cross_entropy_matches_reference():
    torch.manual_seed(0)
    h = torch.randn(37, 8, requires_grad=True)
    W = torch.randn(21, 8, requires_grad=True)
    t = torch.randint(1, 21, (37,))
    loss = fused_linear_cross_entropy(h, W, t, chunk=10)
    loss.backward()
    h2, W2 = h.detach().clone().requires_grad_(True), W.detach().clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(h2 @ W2[1:].T, t - 1)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-5)
    assert torch.allclose(h.grad, h2.grad, atol=1e-5) and torch.allclose(W.grad, W2.grad, atol=1e-5)


def test_training_windows_cover_every_target_once():
    data = SequenceData.from_lists([[1, 2], [3], list(range(1, 13))], 20)
    starts, lens = training_windows(data, max_len=5)
    targets = sorted(int(s + 1 + i) for s, n in zip(starts, lens) for i in range(n))
    # flat positions of all targets: every item but the first of each sequence
    expected = sorted([1] + list(range(4, 15)))
    assert targets == expected and lens.max() <= 5


def test_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "b")
    loaded = Recommender.load(tmp_path / "b")
    hs = [np.array([1, 30, 22]), np.array([5])]
    assert torch.equal(trained.score(hs), loaded.score(hs))
    assert loaded.history_ == trained.history_


def test_bundle_with_flat_params_of_an_older_version_loads(trained, tmp_path):
    import json

    path = trained.save(tmp_path / "b")
    cfg = json.loads((path / "config.json").read_text())
    # bundles written before betas, grad_clip and lr_decay_factor were hyperparameters
    for name in ("betas", "grad_clip", "lr_decay_factor"):
        del cfg["params"][name]
    (path / "config.json").write_text(json.dumps(cfg))
    loaded = Recommender.load(path)
    assert loaded.get_params()["betas"] == (0.9, 0.98) and loaded.lr == trained.lr
    hs = [np.array([1, 30, 22])]
    assert torch.equal(trained.score(hs), loaded.score(hs))


def test_bundle_written_before_a_default_changed_loads_with_the_value_it_was_trained_with(tmp_path):
    import json

    left = SASRec(**FAST, epochs=2, align="left", batch_targets=None).fit(planted(n_users=60))
    path = left.save(tmp_path / "b")
    cfg = json.loads((path / "config.json").read_text())
    for name in SASRec.older_bundle_params:  # what a bundle of the older version lists
        del cfg["params"][name]
    (path / "config.json").write_text(json.dumps(cfg))
    loaded = Recommender.load(path)
    assert loaded.align == "left" and loaded.batch_targets is None and loaded.ema_decay is None
    assert loaded.label_smoothing == 0.0
    assert SASRec().align == "right"  # today's default would read the positions the other way
    assert SASRec().ema_decay == "auto"  # a retrain of the loaded bundle keeps its own recipe
    hs = [np.array([1, 30, 22]), np.array([5])]
    assert torch.equal(left.score(hs), loaded.score(hs))


def test_validation_without_a_metric_is_refused():
    with pytest.raises(ValueError, match="SASRec.fit got valid= without metric="):
        SASRec(**FAST, epochs=1).fit(planted(20), probe_set(10))


def test_early_stopping_keeps_best_epoch():
    data = planted(200)
    valid = probe_set(100, seed=3)
    m = SASRec(**FAST, epochs=30, patience=2, eval_every=1).fit(data, valid, validation_metric())
    best = max(h["NDCG@10"] for h in m.history_)
    assert m.best_metric_ == best
    assert m.history_[m.best_epoch_ - 1]["NDCG@10"] == best
    assert evaluate(m, valid, ks=(10,))["NDCG@10"] == pytest.approx(best)
    assert m.refit_params()["epochs"] == m.best_epoch_


@pytest.mark.parametrize("mixer", ["none", "lowpass"])
def test_network_is_causal(mixer):
    m = SASRec(d_model=16, n_heads=2, n_layers=2, max_len=10, mixer=mixer, align="left")  # right padding
    net = m._build(30).eval()
    seq = torch.tensor([[3, 7, 1, 9, 4, 12]])
    h = net(seq)
    seq2 = seq.clone()
    seq2[0, 4] = 25  # change a future item
    h2 = net(seq2)
    assert torch.allclose(h[:, :4], h2[:, :4], atol=1e-6)
    assert not torch.allclose(h[:, 4:], h2[:, 4:])
    # right padding does not change the real positions
    h3 = net(torch.cat([seq, torch.zeros(1, 3, dtype=torch.long)], dim=1))
    assert torch.allclose(h, h3[:, :6], atol=1e-6)


def test_sparse_item_gradients_learn_the_planted_rule():
    """Row-sparse item-table gradients (SparseAdam): the large-catalogue path still learns."""
    m = SASRec(**FAST, loss="sampled_softmax", n_negatives=16, sparse_grad=True, epochs=25).fit(planted())
    assert m.net_.item_emb.sparse
    assert evaluate(m, probe_set(), ks=(10,))["HR@10"] > 0.8


def test_sparse_grad_auto_and_bad_values():
    m = SASRec(loss="sampled_softmax")
    assert m._sparse_grad_value(SASRec.SPARSE_GRAD_MIN_ITEMS) is True
    assert m._sparse_grad_value(1000) is False
    assert SASRec(loss="ce")._sparse_grad_value(10**6) is False  # full CE touches every row anyway
    with pytest.raises(ValueError, match="sampled loss"):
        SASRec(loss="ce", sparse_grad=True)._sparse_grad_value(10)
    with pytest.raises(ValueError, match="sparse_grad must be"):
        SASRec(sparse_grad="yes")._sparse_grad_value(10)


def test_sparse_grad_checkpoint_resume_continues_both_optimisers(tmp_path):
    kw = dict(FAST, loss="sampled_softmax", n_negatives=8, sparse_grad=True, checkpoint_dir=str(tmp_path))
    full = SASRec(**kw, epochs=3).fit(planted(60))
    SASRec(**kw, epochs=2).fit(planted(60))  # interrupted after 2 epochs ...
    resumed = SASRec(**kw, epochs=3, resume=True).fit(planted(60))  # ... and resumed to 3
    assert [h["epoch"] for h in resumed.history_] == [1, 2, 3]
    for k, v in full.net_.state_dict().items():
        torch.testing.assert_close(resumed.net_.state_dict()[k], v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("training,align", [("prefixes", "right"), ("positions", "right"), ("prefixes", "left")])
def test_training_and_alignment_variants_learn_planted_rule(training, align):
    m = SASRec(**FAST, epochs=15 if training == "prefixes" else 25, training=training, align=align).fit(planted())
    res = evaluate(m, probe_set(), ks=(1, 10))
    assert res["HR@1"] > 0.6, (training, align, res.metrics)


def test_target_budget_batches_hold_each_window_once_and_equal_target_counts():
    from attnrec.models.batching import target_budget_batches

    rng = np.random.default_rng(0)
    lens = np.minimum(rng.geometric(0.15, size=5_000), 50)
    batches = list(target_budget_batches(lens, 300, np.random.default_rng(1)))
    together = np.concatenate(batches)
    assert sorted(together.tolist()) == list(range(len(lens)))  # every window exactly once
    sizes = np.array([lens[b].sum() for b in batches])
    assert sizes.max() < 300 + 50  # closes once it holds the budget: at most one window beyond it
    assert np.median(sizes) >= 300 and np.mean(sizes >= 250) > 0.9  # short windows come many to a batch
    assert max(len(b) for b in batches) > 10 * min(len(b) for b in batches)
    again = list(target_budget_batches(lens, 300, np.random.default_rng(2)))
    assert [b.tolist() for b in again] != [b.tolist() for b in batches]  # a new order every epoch


def test_batch_targets_learns_the_planted_rule_and_checks_its_value():
    m = SASRec(**FAST, epochs=25, batch_targets=300).fit(planted())
    assert evaluate(m, probe_set(), ks=(1,))["HR@1"] > 0.6
    with pytest.raises(ValueError, match="batch_targets must be a positive integer"):
        SASRec(**FAST, epochs=1, batch_targets=0).fit(planted(n_users=20))


def test_training_prefixes_cover_every_target_once():
    from attnrec.models.batching import training_prefixes, window_ids

    data = SequenceData.from_lists([[1, 2, 3, 4, 5, 6, 7], [8, 9], [10]], 10)
    starts, lens = training_prefixes(data, max_len=3)
    assert data.items[starts + lens].tolist() == [2, 3, 4, 5, 6, 7, 9]  # every item but each sequence's first
    assert lens.tolist() == [1, 2, 3, 3, 3, 3, 1]  # inputs capped at max_len, never crossing users
    assert [data.items[s:s + n].tolist() for s, n in zip(starts, lens)][3] == [2, 3, 4]
    ids, real = window_ids(data.items, starts[[0, 3]], lens[[0, 3]], left=True)
    assert ids.tolist() == [[0, 0, 1], [2, 3, 4]] and real.tolist() == [[False, False, True], [True] * 3]


@pytest.mark.parametrize("mixer", ["none", "lowpass"])
def test_right_alignment_ignores_left_padding(mixer):
    """A history gives the same scores alone and in a batch with a longer one (left padding masked)."""
    m = SASRec(**FAST, epochs=2, align="right", mixer=mixer).fit(planted(n_users=50))
    short, long = np.array([3, 25, 13]), np.arange(21, 35)
    alone = m.score([short])
    batched = m.score([short, long])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    w, lens = m.attention_weights([short, long])
    assert lens.tolist() == [3, 14]
    assert torch.allclose(w[0][0, :, :3, :3].sum(-1), torch.ones(FAST["n_heads"], 3), atol=1e-5)
    assert float(w[0][0, :, :, 3:].abs().sum()) == 0.0  # nothing beyond the short history


def test_auto_epochs_budget_optimiser_steps():
    m = SASRec(epochs="auto", batch_size=128)
    assert m._auto_epochs(175) == 20  # 175 steps an epoch (Amazon Beauty's windows) -> 3500 steps
    assert m._auto_epochs(19) == 185  # a small dataset trains longer ...
    assert m._auto_epochs(1) == 200  # ... up to the cap
    assert m._auto_epochs(78_125) == 10  # and a huge one at least 10 epochs
    assert SASRec(epochs=7)._auto_epochs(1) == 7  # an explicit budget is kept
    fitted = SASRec(**{**FAST, "batch_size": 64}, epochs="auto").fit(planted(n_users=40))
    assert fitted.epochs_ == 200 and fitted.epochs_run_ == 200  # 40 windows = 1 step an epoch
    assert fitted.refit_params()["lr_schedule_epochs"] == 200


def test_bf16_auto_follows_the_cpu():
    from attnrec.training import cpu_has_fast_bf16, resolve_bf16

    assert resolve_bf16("auto") == cpu_has_fast_bf16()
    assert resolve_bf16(True) is True and resolve_bf16(False) is False
    with pytest.raises(ValueError, match="bf16 must be true, false or 'auto'"):
        resolve_bf16("yes")


@pytest.mark.parametrize("training,align", [("positions", "right"), ("positions", "left"), ("prefixes", "right")])
def test_loss_excludes_seen_leaves_out_exactly_the_items_before_each_target(monkeypatch, training, align):
    from attnrec.models import losses

    seqs = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]  # each item once: a target names its user
    data = SequenceData.from_lists(seqs, 10)
    rows = []
    real_ce = losses.cross_entropy

    def spy(h, W, tgt, chunk=256, masked=None, smoothing=0.0):
        rows.extend(zip(tgt.tolist(), [sorted(int(i) for i in r if i) for r in masked]))
        return real_ce(h, W, tgt, chunk, masked)

    monkeypatch.setattr(losses, "cross_entropy", spy)
    SASRec(d_model=8, n_heads=1, n_layers=1, max_len=3, dropout=0.0, epochs=1, num_threads=1,
           training=training, align=align, loss_excludes_seen=True).fit(data)
    # each target with the items before it in its window of at most max_len inputs
    want = sorted((s[i], sorted(s[max(0, i - 3):i])) for s in seqs for i in range(1, len(s)))
    if training == "positions":  # windows of max_len: a later window's first targets see fewer items
        assert sorted(t for t, _ in rows) == sorted(t for t, _ in want)
        assert all(seen and set(seen) <= set(s[:s.index(t)]) and s[s.index(t) - 1] in seen
                   for t, seen in rows for s in seqs if t in s)
    else:
        assert sorted(rows) == want
    with pytest.raises(ValueError, match="loss_excludes_seen needs loss='ce'"):
        SASRec(d_model=8, n_heads=1, n_layers=1, max_len=3, epochs=1, loss="bce", loss_excludes_seen=True).fit(data)


def test_weight_average_auto_spans_two_epochs_of_steps_and_is_off_under_privacy():
    m = SASRec(**FAST, epochs=1, batch_targets=300).fit(planted(n_users=100))
    steps = -(-int(m.n_train_targets_) // 300)
    assert m.ema_decay_ == pytest.approx(1 - 1 / (2 * steps)) and m.train_config().ema_decay == m.ema_decay_
    assert SASRec(ema_decay=0.9).train_config().ema_decay == 0.9  # a number is used as given
    private = SASRec(**{**FAST, "dropout": 0.0}, epochs=1, privacy_epsilon=8.0).fit(planted(n_users=40))
    assert private.ema_decay_ is None and private.train_config().ema_decay is None


def test_relative_positions_compute_each_window_position_as_its_prefix_sample():
    """positions="relative": position t of a window equals the last position of the prefix ending at t,
    so training on all positions at once is training on every prefix."""
    for mixer in ("none", "lowpass"):
        m = SASRec(d_model=16, n_heads=2, n_layers=2, max_len=8, mixer=mixer, positions="relative")
        net = m._build(30).eval()
        assert net.pos_emb is None
        with torch.no_grad():
            net.lag_bias.normal_()  # a non-trivial bias (it starts at zero)
        window = torch.tensor([[0, 0, 3, 7, 1, 9, 4, 12]])  # left padded
        h = net(window)  # (1, 8, d)
        for t in range(2, 8):
            # (1, 8): the window's items up to t, left padded
            prefix = torch.cat([torch.zeros(1, 7 - t, dtype=torch.long), window[:, 2:t + 1]], 1)
            torch.testing.assert_close(net(prefix)[0, -1], h[0, t], atol=1e-5, rtol=0)
        # the fast path (float mask into SDPA) and the explicit one that returns weights agree
        hw, weights = net(window, need_weights=True)
        torch.testing.assert_close(hw, h, atol=1e-5, rtol=0)
        assert float(weights[0][0, :, :, :2].detach().abs().sum()) == 0.0  # padding keys get no weight
        # no absolute index: shifting the window by one leaves each item's state where it was
        shifted = torch.cat([window[:, 1:], torch.tensor([[5]])], 1)
        torch.testing.assert_close(net(shifted)[0, -2], h[0, -1], atol=1e-5, rtol=0)
        with torch.no_grad():
            net.lag_bias.zero_()
        assert not torch.allclose(net(window), h, atol=1e-4)  # the bias is used


def test_relative_positions_learn_the_planted_rule_and_round_trip(tmp_path):
    m = SASRec(**FAST, epochs=25, positions="relative").fit(planted())
    assert evaluate(m, probe_set(), ks=(1,))["HR@1"] > 0.6
    m.save(tmp_path / "rel")
    back = Recommender.load(tmp_path / "rel")
    assert back.positions == "relative" and back.net_.pos_emb is None
    hists = [np.array([3, 25, 13]), np.arange(21, 35)]
    torch.testing.assert_close(back.score(hists), m.score(hists))
    with pytest.raises(ValueError, match="positions must be one of"):
        SASRec(positions="rotary")._build(10)


def test_input_item_dropout_hides_input_items_in_training_only():
    m = SASRec(d_model=16, n_heads=2, n_layers=1, max_len=6, dropout=0.0, mixer="none", input_item_dropout=0.5)
    net = m._build(30)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6]])
    net.eval()
    assert torch.equal(net(seq), net(seq))  # inference sees every item
    net.train()
    torch.manual_seed(0)
    outs = [net(seq) for _ in range(20)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])  # a new draw every step
    net.cfg.input_item_dropout = 0.999999
    other = torch.tensor([[7, 8, 9, 10, 11, 12]])
    torch.testing.assert_close(net(seq), net(other))  # every item hidden: only the positions remain
    with pytest.raises(ValueError, match="input_item_dropout must be in"):
        SASRec(input_item_dropout=1.0)._build(10)



def test_label_smoothing_auto_smooths_the_full_softmax_only(monkeypatch):
    from attnrec.models import losses

    assert SASRec()._label_smoothing_value() == SASRec.AUTO_LABEL_SMOOTHING > 0
    for off in (SASRec(loss="bce"), SASRec(loss="sampled_softmax"), SASRec(loss_excludes_seen=True),
                SASRec(privacy_epsilon=8.0)):
        assert off._label_smoothing_value() == 0.0  # "auto" where the loss has no full-softmax target
    assert SASRec(label_smoothing=0.05)._label_smoothing_value() == 0.05
    with pytest.raises(ValueError, match="label_smoothing needs loss='ce'"):
        SASRec(loss="bce", label_smoothing=0.1)._build(10)
    with pytest.raises(ValueError, match="label_smoothing must be 'auto' or a number in"):
        SASRec(label_smoothing=1.5)._build(10)
    used = []
    real_ce = losses.cross_entropy

    def spy(h, W, tgt, chunk=256, masked=None, smoothing=0.0):
        used.append(smoothing)
        return real_ce(h, W, tgt, chunk, masked, smoothing)

    monkeypatch.setattr(losses, "cross_entropy", spy)
    SASRec(**FAST, epochs=1).fit(planted(n_users=20))
    assert used and set(used) == {SASRec.AUTO_LABEL_SMOOTHING}  # the default trains with it
