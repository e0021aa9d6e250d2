"""User-level differentially private training (attnrec.privacy): accounting, clipping, seeds, serving."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("opacus")

from attnrec import privacy as dp  # noqa: E402
from attnrec.models.attention import AttentionConfig  # noqa: E402
from attnrec.models.bert4rec import BERT4Rec  # noqa: E402
from attnrec.models.sasrec import SASRec, next_item_batch  # noqa: E402
from attnrec.models.sasrec_net import SASRecConfig, SASRecNet  # noqa: E402

TINY = dict(d_model=16, n_layers=1, n_heads=1, max_len=12, batch_size=32, num_threads=1,
            privacy_microbatch=16)


@pytest.fixture(scope="module")
def shop_data(small_synthetic):
    return small_synthetic.to_sequences()


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.net_.state_dict().items()}


# ---- accounting ---------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SASRec, BERT4Rec])
def test_spent_epsilon_is_at_most_the_requested_one(cls, shop_data):
    m = cls(**TINY, epochs=2, privacy_epsilon=2.0).fit(shop_data)
    rep = m.privacy_
    n_rows = int((shop_data.lengths >= 2).sum())
    assert rep["n_rows"] == n_rows
    assert rep["sample_rate"] == pytest.approx(32 / n_rows)
    assert rep["steps"] == rep["planned_steps"] == 2 * int(n_rows / 32)
    assert rep["delta"] == pytest.approx(1 / shop_data.n_users)  # the default
    assert 0 < rep["epsilon"] <= 2.0
    assert rep["epsilon"] > 1.9  # calibrated to the target, not wastefully far below it
    # an independent Opacus accountant fed the same (sigma, q, steps) agrees
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(rep["noise_multiplier"], rep["sample_rate"], rep["steps"])]
    assert acc.get_epsilon(rep["delta"]) == pytest.approx(rep["epsilon"])
    assert rep["accountant"] == "rdp" and rep["selection"] == "fixed-epochs"
    assert rep["max_grad_norm"] == 1.0 and rep["unit"] == "user"


def test_prv_accountant_also_stays_within_budget(shop_data):
    m = SASRec(**TINY, epochs=1, privacy_epsilon=4.0, privacy_accountant="prv",
               privacy_delta=1e-4).fit(shop_data)
    assert m.privacy_["accountant"] == "prv"
    assert m.privacy_["delta"] == 1e-4
    assert 0 < m.privacy_["epsilon"] <= 4.0


def test_training_stops_rather_than_exceed_the_budget(shop_data, caplog):
    """The loop plans 3 epochs but the budget was planned for 1: it stops after 1."""
    from attnrec.training import TrainConfig, train

    n_rows = int((shop_data.lengths >= 2).sum())
    hook = dp.DPSGD(dp.PrivacyConfig(epsilon=1.0, delta=1e-3, n_rows=n_rows, expected_batch_size=32,
                                     epochs=1, microbatch=16))
    model = SASRec(**TINY, epochs=1, privacy_epsilon=1.0)
    model.n_items_ = shop_data.n_items
    net = model._build(shop_data.n_items)
    users = np.flatnonzero(shop_data.lengths >= 2)
    lens = np.minimum(shop_data.lengths[users] - 1, 12)
    starts = shop_data.indptr[users + 1] - 1 - lens

    def batches(epoch, rng):
        for rows in hook.sample_rows(rng):
            yield [next_item_batch(shop_data, starts[r], lens[r]) for r in dp.microbatches(rows, lens, 16)]

    def loss_fn(module, batch):
        seq, tgt, mask = batch
        return dp.per_row_cross_entropy(module(seq), module.output_weight(), tgt, mask)

    with caplog.at_level(logging.WARNING, logger="attnrec.training"):
        res = train(net, batches, loss_fn, TrainConfig(epochs=3, progress=False), privacy=hook)
    assert res.epochs_run == 1
    assert "privacy budget spent after epoch 1" in caplog.text
    assert res.privacy["steps"] == res.privacy["planned_steps"] == int(n_rows / 32)
    assert res.privacy["epsilon"] <= 1.0
    with pytest.raises(dp.PrivacyBudgetExhausted, match="planned .* steps are spent"):
        hook.step(net, [], loss_fn)


# ---- per-user clipping --------------------------------------------------------------------
def _tiny_net() -> SASRecNet:
    torch.manual_seed(0)
    net = SASRecNet(SASRecConfig(n_items=30, max_len=8, n_layers=1, mixer="lowpass",
                                 attention=AttentionConfig(d_model=8, n_heads=1, dropout=0.0)))
    return net.train()


def _rows(n: int, T: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, 31, (n, T), generator=g)
    tgt = torch.randint(1, 31, (n, T), generator=g)
    return seq, tgt, torch.ones(n, T, dtype=torch.bool)


def _scaled_loss(scale: torch.Tensor):
    """Per-row CE times a per-row factor (a planted huge gradient: factor 1e6)."""
    def loss_fn(module, batch):
        seq, tgt, mask, s = batch
        return s * dp.per_row_cross_entropy(module(seq), module.output_weight(), tgt, mask)
    return loss_fn


def _noiseless_update(batch, loss_fn, clip: float, expected: int, lr: float = 1.0) -> torch.Tensor:
    net = _tiny_net()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    hook = dp.DPSGD(dp.PrivacyConfig(epsilon=1.0, delta=1e-3, n_rows=100, expected_batch_size=expected,
                                     epochs=1, max_grad_norm=clip, microbatch=2))
    hook.noise_multiplier = 0.0  # isolate clipping
    hook.attach(torch.optim.SGD(net.parameters(), lr=lr))
    hook.step(net, batch, loss_fn)
    return torch.cat([p.detach().flatten() for p in net.parameters()]) - before


def test_a_user_with_a_huge_gradient_moves_the_weights_at_most_lr_clip_over_batch():
    seq, tgt, mask = _rows(5)
    scale = torch.tensor([1e6, 1.0, 1.0, 1.0, 1.0])  # user 0: a planted huge gradient
    C, B, lr = 0.5, 5, 1.0
    loss = _scaled_loss(scale)
    alone = _noiseless_update([(seq[:1], tgt[:1], mask[:1], scale[:1])], loss, C, B, lr)
    # clipped to exactly C (it was far larger), averaged over the expected batch size
    assert alone.norm().item() == pytest.approx(lr * C / B, rel=1e-3)

    # the planted user's influence on a whole batch (split over micro-batches of 2) is bounded
    # by the sensitivity 2C/B: compare with the same batch where that user is ordinary
    full = [(seq[i:i + 2], tgt[i:i + 2], mask[i:i + 2], scale[i:i + 2]) for i in range(0, 5, 2)]
    calm = scale.clone()
    calm[0] = 1.0
    full_calm = [(seq[i:i + 2], tgt[i:i + 2], mask[i:i + 2], calm[i:i + 2]) for i in range(0, 5, 2)]
    d_planted = _noiseless_update(full, loss, C, B, lr)
    d_calm = _noiseless_update(full_calm, _scaled_loss(calm), C, B, lr)
    assert (d_planted - d_calm).norm().item() <= 2 * lr * C / B + 1e-6
    assert d_planted.norm().item() <= lr * C + 1e-6  # 5 users, each at most C, over B = 5

    # without DP the same user moves the weights by orders of magnitude more
    net = _tiny_net()
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    loss(net, (seq, tgt, mask, scale)).mean().backward()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert (after - before).norm().item() > 1000 * lr * C / B


def test_per_user_gradients_match_one_backward_per_user():
    """torch.func per-row gradients (tied output weight, low-pass mixer) equal plain autograd."""
    net = _tiny_net().eval()
    seq, tgt, mask = _rows(3)
    mask[1, 4:] = False  # a shorter user
    loss_fn = _scaled_loss(torch.ones(3))
    wrapper = dp._PerRowLoss(net, loss_fn)
    params = {k: p for k, p in wrapper.named_parameters()}
    grads, losses = dp._per_row_grads(wrapper, params, (seq, tgt, mask, torch.ones(3)))
    for i in range(3):
        net.zero_grad()
        li = loss_fn(net, (seq[i:i + 1], tgt[i:i + 1], mask[i:i + 1], torch.ones(1))).sum()
        li.backward()
        assert losses[i].item() == pytest.approx(li.item(), rel=1e-5)
        for k, p in wrapper.named_parameters():
            torch.testing.assert_close(grads[k][i], p.grad, rtol=1e-4, atol=1e-6)
    assert "net.item_emb.weight" in grads and "net.blocks.0.mixer.log_tau" in grads
    # the per-user loss is the mean full-softmax cross-entropy over the user's real positions
    with torch.no_grad():
        h, W = net(seq[1:2]), net.output_weight()
        ref = torch.nn.functional.cross_entropy((h[0, :4] @ W[1:].T), tgt[1, :4] - 1)
    assert losses[1].item() == pytest.approx(ref.item(), rel=1e-5)


# ---- reproducibility ----------------------------------------------------------------------
def test_private_training_is_reproducible_from_its_seed(shop_data):
    a = SASRec(**TINY, epochs=1, privacy_epsilon=3.0, seed=5).fit(shop_data)
    b = SASRec(**TINY, epochs=1, privacy_epsilon=3.0, seed=5).fit(shop_data)
    c = SASRec(**TINY, epochs=1, privacy_epsilon=3.0, seed=6).fit(shop_data)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history_[0]["loss"] == b.history_[0]["loss"]
    assert a.privacy_ == b.privacy_
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


# ---- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("params, message", [
    (dict(privacy_epsilon=-1.0), "privacy_epsilon must be a positive finite number, got -1.0"),
    (dict(privacy_epsilon="lots"), "privacy_epsilon must be a positive number or inf, got 'lots'"),
    (dict(privacy_epsilon=1.0, privacy_delta=2.0), r"privacy_delta must be in \(0, 1\), got 2.0"),
    (dict(privacy_epsilon=1.0, privacy_accountant="gdp"), "privacy_accountant must be one of"),
    (dict(privacy_epsilon=1.0, privacy_clip=0.0), "privacy_clip must be > 0"),
    (dict(privacy_epsilon=1.0, loss="bce"), "privacy_epsilon needs loss='ce'"),
    (dict(privacy_epsilon=1.0, bf16=True), "bf16 cannot be combined with privacy_epsilon"),
])
def test_bad_privacy_settings_are_named(params, message, shop_data):
    with pytest.raises(ValueError, match=message):
        SASRec(**{**TINY, "epochs": 1, **params}).fit(shop_data)


def test_infinite_epsilon_means_ordinary_training(shop_data):
    for eps in (float("inf"), "inf", None):  # "inf" as given on the command line
        m = SASRec(**TINY, epochs=1, privacy_epsilon=eps).fit(shop_data)
        assert not m.private and m.privacy_ is None and m.selects_on_validation()


def test_private_fit_ignores_validation_and_pipeline_trains_once(shop_data):
    from attnrec.pipeline import fit_for_test, make_split

    split = make_split(shop_data)
    m = fit_for_test(SASRec(**TINY, epochs=1, privacy_epsilon=4.0), split)
    assert m.validation_ is None  # no selection run on validation
    assert m.epochs_run_ == 1 and "NDCG@10" not in m.history_[0]


# ---- bundle and serving -------------------------------------------------------------------
def test_a_private_bundle_loads_and_serves(shop_data, tmp_path):
    from fastapi.testclient import TestClient

    from attnrec.models.base import Recommender
    from attnrec.serving import Settings, create_app

    m = SASRec(**TINY, epochs=1, privacy_epsilon=4.0).fit(shop_data)
    m.save(tmp_path / "bundle")
    loaded = Recommender.load(tmp_path / "bundle")
    assert loaded.privacy_ == m.privacy_
    h = [shop_data.items[shop_data.indptr[0]:shop_data.indptr[1]]]
    torch.testing.assert_close(loaded.score(h), m.score(h))

    settings = Settings(model_path=tmp_path / "bundle", database_url=f"sqlite:///{tmp_path}/ev.db",
                        data_dir=tmp_path / "data", dev=True)
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(TestClient(create_app(settings)))
        user = loaded.user_map_.to_raw(0)
        r = client.get(f"/users/{user}/recommendations", params={"k": 5})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5
        card = client.get("/explorer/model").json()
        p = card["privacy"]
        for key in ("epsilon", "delta", "accountant", "sample_rate", "max_grad_norm", "noise_multiplier"):
            assert key in p
        assert p["epsilon"] <= 4.0 and p["accountant"] == "rdp"
        assert card["params"]["privacy_epsilon"] == 4.0


def test_a_model_without_a_dp_path_refuses_privacy_epsilon(shop_data):
    """The option lives in the shared TrainConfig; DIN's two-stage ranker has no DP step."""
    from attnrec.models.din import TwoStage

    model = TwoStage(first_stage="pop", n_candidates=20, d_model=8, max_len=5, att_hidden=8,
                     mlp_hidden=[8], epochs=1, batch_size=32, num_threads=1, privacy_epsilon=1.0)
    with pytest.raises(ValueError, match="privacy_epsilon is supported by sasrec and bert4rec, not two-stage"):
        model.fit(shop_data)
