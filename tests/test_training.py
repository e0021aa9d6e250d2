"""The shared training loop: determinism, early stopping, checkpoint + resume, history."""

import pytest
import numpy as np
import pytest
import torch

from attnrec.training import CHECKPOINT_FILE, TrainConfig, train


def make_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 8, generator=g)
    y = X @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(123)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))

    def batches(epoch, rng):
        perm = rng.permutation(len(X))
        for i in range(0, len(X), 32):
            yield X[perm[i : i + 32]], y[perm[i : i + 32]]

    def loss_fn(model, batch):
        xb, yb = batch
        return torch.nn.functional.mse_loss(model(xb), yb)

    return module, batches, loss_fn


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 6, "lr": 1e-2, "progress": False, "num_threads": 1, **kw})


def weights(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_deterministic_and_history():
    m1, b1, l1 = make_problem()
    r1 = train(m1, b1, l1, cfg())
    m2, b2, l2 = make_problem()
    r2 = train(m2, b2, l2, cfg())
    assert all(torch.equal(a, b) for a, b in zip(weights(m1).values(), weights(m2).values()))
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert [h["epoch"] for h in r1.history] == list(range(1, 7))
    assert all(h["seconds"] >= 0 for h in r1.history)
    assert r1.history[-1]["loss"] < r1.history[0]["loss"]


def test_early_stopping_restores_best_epoch():
    m, b, l = make_problem()
    script = iter([0.1, 0.3, 0.2, 0.25, 0.1, 0.5])
    snapshots = []

    def evaluate():
        snapshots.append(weights(m))
        return next(script)

    r = train(m, b, l, cfg(patience=2), evaluate, metric="NDCG@10")
    assert r.stopped_early and r.epochs_run == 4
    assert r.best_epoch == 2 and r.best_metric == 0.3
    assert [h["NDCG@10"] for h in r.history] == [0.1, 0.3, 0.2, 0.25]
    assert all(torch.equal(v, snapshots[1][k]) for k, v in m.state_dict().items())


def test_checkpoint_and_resume_reproduce_uninterrupted_run(tmp_path):
    m_full, b, l = make_problem()
    r_full = train(m_full, b, l, cfg())
    # interrupted after 3 epochs, then resumed to 6
    m_a, b_a, l_a = make_problem()
    train(m_a, b_a, l_a, cfg(epochs=3, checkpoint_dir=str(tmp_path)))
    assert (tmp_path / CHECKPOINT_FILE).exists()
    m_b, b_b, l_b = make_problem()  # fresh process: new module, same init
    r_b = train(m_b, b_b, l_b, cfg(checkpoint_dir=str(tmp_path), resume=True))
    assert [h["epoch"] for h in r_b.history] == list(range(1, 7))
    np.testing.assert_allclose([h["loss"] for h in r_b.history], [h["loss"] for h in r_full.history], rtol=1e-6)
    for k, v in m_full.state_dict().items():
        assert torch.allclose(v, m_b.state_dict()[k], atol=1e-6)


def test_sasrec_resume_from_checkpoint(tmp_path):
    from attnrec.models.sasrec import SASRec
    from tests.models.test_sasrec import FAST, planted

    data = planted(100)
    full = SASRec(**FAST, epochs=4).fit(data)
    SASRec(**FAST, epochs=2, checkpoint_dir=str(tmp_path)).fit(data)
    resumed = SASRec(**FAST, epochs=4, checkpoint_dir=str(tmp_path), resume=True).fit(data)
    assert len(resumed.history_) == 4
    h = [np.array([1, 30])]
    assert torch.allclose(full.score(h), resumed.score(h), atol=1e-5)


def test_bf16_option_runs():
    m, b, l = make_problem()
    r = train(m, b, l, cfg(epochs=2, bf16=True))
    assert np.isfinite(r.history[-1]["loss"])


def test_lr_decays_on_plateau_and_replays_at_fixed_epochs():
    m, b, l = make_problem()
    script = iter([0.1, 0.3, 0.2, 0.25, 0.4, 0.3, 0.2, 0.1])  # bad evaluations: 3, 4 | 6, 7, 8
    r = train(m, b, l, cfg(epochs=8, patience=5, lr_decay_patience=2), lambda: next(script))
    # a decay after every 2nd bad evaluation since the last improvement: epochs 4 and 7
    assert r.lr_decays == [4, 7]
    assert [h.get("lr_decayed", False) for h in r.history] == [False] * 3 + [True] + [False] * 2 + [True, False]
    # the replay (as the refit on train+valid runs it): same epochs, no validation; the rate is
    # halved after each, so a run with the decays differs from one without from epoch 5 on
    m1, b1, l1 = make_problem()
    r1 = train(m1, b1, l1, cfg(epochs=6, lr_decay_epochs=(4,)))
    m2, b2, l2 = make_problem()
    r2 = train(m2, b2, l2, cfg(epochs=6))
    assert r1.lr_decays == [4]
    assert [h["loss"] for h in r1.history[:4]] == [h["loss"] for h in r2.history[:4]]
    assert r1.history[4]["loss"] != r2.history[4]["loss"]


def test_refit_params_replay_the_decays_before_the_best_epoch():
    from attnrec.models import SASRec

    m = SASRec()
    m.best_epoch_, m.lr_decays_, m.n_items_ = 12, [5, 9, 14], 3
    p = m.refit_params()
    assert p["epochs"] == 12 and p["lr_decay_epochs"] == [5, 9] and p["lr_decay_patience"] is None


def test_lr_schedules_hand_computed_and_refit_keeps_the_horizon():
    from attnrec.models import SASRec
    from attnrec.training import lr_at

    c = cfg(epochs=4, lr=1.0, lr_schedule="cosine")
    assert [round(lr_at(c, e), 6) for e in (1, 2, 3, 4)] == [1.0, 0.853553, 0.5, 0.146447]
    assert [lr_at(cfg(epochs=4, lr=2.0, lr_schedule="linear"), e) for e in (1, 3)] == [2.0, 1.0]
    assert lr_at(cfg(epochs=4, lr=1.0, lr_schedule="cosine", lr_schedule_epochs=8), 5) == 0.5
    assert lr_at(cfg(epochs=4, lr=1.0), 3, n_decays=2) == 0.25  # constant rate, two plateau halvings
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        lr_at(cfg(lr_schedule="step"), 1)
    m = SASRec(epochs=40, lr_schedule="cosine")
    m.best_epoch_, m.lr_decays_, m.n_items_ = 25, [], 3
    p = m.refit_params()
    assert p["epochs"] == 25 and p["lr_schedule_epochs"] == 40  # the refit's epoch 25 gets epoch 25's rate
    # the optimiser follows the schedule: with lr 0 from epoch 2 on (linear over 1 epoch) nothing moves
    m2, b2, l2 = make_problem()
    train(m2, b2, l2, cfg(epochs=1))
    after_one = {k: v.clone() for k, v in m2.state_dict().items()}
    m3, b3, l3 = make_problem()
    train(m3, b3, l3, cfg(epochs=3, lr_schedule="linear", lr_schedule_epochs=1))
    assert all(torch.allclose(v, m3.state_dict()[k]) for k, v in after_one.items())


def test_module_with_only_sparse_parameters_trains():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 4, sparse=True)
    target = torch.randn(20, 4)
    before = emb.weight.detach().clone()

    def batches(epoch, rng):
        for _ in range(10):
            yield torch.arange(20)  # every row each step: the loss must fall steadily

    def loss_fn(module, ids):
        return ((module(ids) - target[ids]) ** 2).mean()

    r = train(emb, batches, loss_fn, cfg(epochs=3))
    assert emb.weight.grad is None or emb.weight.grad.is_sparse
    assert r.history[-1]["loss"] < r.history[0]["loss"] and not torch.equal(emb.weight, before)


def test_one_argument_loss_is_refused_with_a_clear_error():
    m, b, _ = make_problem()
    with pytest.raises(TypeError, match=r"loss_fn must take \(module, batch\)"):
        train(m, b, lambda batch: m(batch[0]).sum(), cfg(epochs=1))


def test_training_options_are_declared_once_and_are_flat_hyperparameters():
    from dataclasses import fields

    from attnrec.models import BERT4Rec, SASRec
    from attnrec.models.din import TwoStage

    names = {f.name for f in fields(TrainConfig)}
    for cls in (SASRec, BERT4Rec, TwoStage):
        assert names <= set(cls().get_params()), cls
    b = BERT4Rec()
    assert (b.lr, b.batch_size, b.lr_decay_patience) == (2e-3, 64, 3)  # BERT4Rec's own defaults
    assert (TwoStage().epochs, SASRec().epochs) == (20, 200)
    c = b.set_params(lr_decay_patience=5, bf16=True, epochs=7).train_config()
    assert isinstance(c, TrainConfig) and (c.lr_decay_patience, c.bf16, c.epochs, c.lr) == (5, True, 7, 2e-3)
    with pytest.raises(TypeError, match="SASRec has no hyperparameter 'lrr'"):
        SASRec(lrr=1e-3)


def test_weight_average_is_the_hand_computed_ema_and_does_not_change_training(tmp_path):
    decay = 0.9
    # the live trajectory: parameters after every step (snapshots taken at the next step's forward)
    m, b, l = make_problem()
    after_steps = []

    def recording_loss(model, batch):
        after_steps.append([p.detach().clone() for p in model.parameters()])
        return l(model, batch)

    r_plain = train(m, b, recording_loss, cfg(epochs=2))
    after_steps = after_steps[1:] + [[p.detach().clone() for p in m.parameters()]]
    ema = [p.clone() for p in after_steps[0]]  # the average starts as the first step's weights
    for step in after_steps[1:]:
        ema = [decay * a + (1 - decay) * p for a, p in zip(ema, step)]

    m2, b2, l2 = make_problem()
    seen = []

    def evaluate():
        seen.append([p.detach().clone() for p in m2.parameters()])
        return float(len(seen))  # always improving: the last evaluation is kept

    r_avg = train(m2, b2, l2, cfg(epochs=2, ema_decay=decay), evaluate)
    # training itself follows the live weights: the same losses as without the average
    np.testing.assert_allclose([h["loss"] for h in r_avg.history], [h["loss"] for h in r_plain.history])
    # validation saw the average, and the model returned is the average
    for got, want in zip(seen[-1], ema):
        torch.testing.assert_close(got, want)
    for got, want in zip(m2.parameters(), ema):
        torch.testing.assert_close(got.detach(), want)
    # without validation the returned model is the average at the last step too
    m3, b3, l3 = make_problem()
    train(m3, b3, l3, cfg(epochs=2, ema_decay=decay))
    for got, want in zip(m3.parameters(), ema):
        torch.testing.assert_close(got.detach(), want)
    # the average is checkpointed: a resumed run ends with the uninterrupted run's weights
    m4, b4, l4 = make_problem()
    train(m4, b4, l4, cfg(epochs=1, ema_decay=decay, checkpoint_dir=str(tmp_path)))
    m5, b5, l5 = make_problem()
    train(m5, b5, l5, cfg(epochs=2, ema_decay=decay, checkpoint_dir=str(tmp_path), resume=True))
    for got, want in zip(m5.parameters(), ema):
        torch.testing.assert_close(got.detach(), want)
    with pytest.raises(ValueError, match="ema_decay must be strictly between 0 and 1"):
        train(*make_problem(), cfg(epochs=1, ema_decay=1.0))
