"""The training losses against their reference formulas (values and gradients)."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnrec.models import losses

N, D, V, K = 12, 8, 40, 16


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, requires_grad=True)
    W = torch.randn(V + 1, D, generator=g, requires_grad=True)
    tgt = torch.randint(1, V + 1, (N,), generator=g)
    return h, W, tgt


def rows_of(W):
    return lambda ids: F.embedding(ids, W)


def grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


def test_gbce_beta_follows_gsasrec():
    assert losses.gbce_beta(256, 12101, 0.0) == pytest.approx(1.0)  # t = 0: plain BCE
    alpha = 256 / 12100
    assert losses.gbce_beta(256, 12101, 1.0) == pytest.approx(alpha)  # t = 1: fully calibrated
    assert losses.gbce_beta(256, 12101, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))


def test_gbce_equals_the_reference_transformed_positive_logit():
    """gSASRec's reference code: the positive logit becomes log(1 / (sigmoid(s)^-beta - 1)), so that
    sigmoid of it is sigmoid(s)^beta; then BCE with logits over [positive, k negatives], mean over all."""
    h, W, tgt = problem()
    torch.manual_seed(5)
    got = losses.gbce(h, tgt, rows_of(W), V, K, t=0.75)
    torch.manual_seed(5)
    neg_ids = torch.randint(1, V + 1, (N, K))  # the same draw
    beta = losses.gbce_beta(K, V, 0.75)
    pos = (h * W[tgt]).sum(-1, keepdim=True).double()
    neg = torch.einsum("nd,nkd->nk", h, W[neg_ids]).double()
    pos_t = torch.log(1.0 / (torch.sigmoid(pos).pow(-beta) - 1.0))
    logits = torch.cat([pos_t, neg], dim=1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    ref = F.binary_cross_entropy_with_logits(logits, labels)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for a, b in zip(grads(got, h, W), grads(ref, h, W)):
        torch.testing.assert_close(a, b.float(), atol=1e-6, rtol=1e-4)


def test_gbce_at_t0_is_bce_over_all_negatives():
    h, W, tgt = problem(1)
    torch.manual_seed(2)
    got = losses.gbce(h, tgt, rows_of(W), V, K, t=0.0)
    torch.manual_seed(2)
    neg_ids = torch.randint(1, V + 1, (N, K))
    logits = torch.cat([(h * W[tgt]).sum(-1, keepdim=True), torch.einsum("nd,nkd->nk", h, W[neg_ids])], 1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(logits, labels))


def test_bce_is_one_negative_per_position():
    h, W, tgt = problem(2)
    torch.manual_seed(3)
    got = losses.bce(h, tgt, rows_of(W), V)
    torch.manual_seed(3)
    neg = (h * W[torch.randint(1, V + 1, (N,))]).sum(-1)
    pos = (h * W[tgt]).sum(-1)
    ref = -(torch.log(torch.sigmoid(pos)) + torch.log(1 - torch.sigmoid(neg))).mean()
    torch.testing.assert_close(got, ref)


def test_sampled_softmax_masks_accidental_hits_and_corrects_by_log_q():
    h, W, tgt = problem(3)
    # uniform: plain softmax over [target, shared negatives], a negative equal to the target removed
    torch.manual_seed(4)
    got = losses.sampled_softmax(h, tgt, rows_of(W), V, K)
    torch.manual_seed(4)
    neg_ids = torch.randint(1, V + 1, (K,))
    ref = []
    for n in range(N):
        keep = neg_ids[neg_ids != tgt[n]]
        logits = torch.cat([(h[n] * W[tgt[n]]).sum()[None], W[keep] @ h[n]])
        ref.append(-torch.log_softmax(logits, 0)[0])
    torch.testing.assert_close(got, torch.stack(ref).mean())
    # from probabilities q: every logit minus log(k q_i)
    q = torch.softmax(torch.randn(V, generator=torch.Generator().manual_seed(9)), 0).double()
    torch.manual_seed(6)
    got = losses.sampled_softmax(h, tgt, rows_of(W), V, K, probs=q)
    torch.manual_seed(6)
    neg_ids = torch.multinomial(q, K, replacement=True) + 1
    logq = torch.log(q.float() * K)
    pos = (h * W[tgt]).sum(-1) - logq[tgt - 1]
    neg = (h @ W[neg_ids].T - logq[neg_ids - 1]).masked_fill(neg_ids[None] == tgt[:, None], -math.inf)
    ref = F.cross_entropy(torch.cat([pos[:, None], neg], 1), torch.zeros(N, dtype=torch.long))
    torch.testing.assert_close(got, ref)


def test_cross_entropy_is_the_full_softmax_over_items():
    h, W, tgt = problem(4)
    got = losses.cross_entropy(h, W, tgt, chunk=5)
    ref = F.cross_entropy(h @ W[1:].T, tgt - 1)
    torch.testing.assert_close(got, ref)
    for a, b in zip(grads(got, h, W), grads(ref, h, W)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_cross_entropy_leaves_masked_items_out_of_each_softmax_but_never_the_target():
    h, W, tgt = problem(4)
    N, V = h.shape[0], W.shape[0] - 1
    g = torch.Generator().manual_seed(3)
    masked = torch.randint(1, V + 1, (N, 4), generator=g)
    masked[:, 0] = 0  # padding: nothing left out
    masked[0, 1] = tgt[0]  # a row's own target listed as seen stays in its softmax
    got = losses.cross_entropy(h, W, tgt, chunk=5, masked=masked)
    out = torch.zeros(N, V + 1, dtype=torch.bool).scatter_(1, masked, True)[:, 1:]
    out[torch.arange(N), tgt - 1] = False
    ref = F.cross_entropy((h @ W[1:].T).masked_fill(out, float("-inf")), tgt - 1)
    torch.testing.assert_close(got, ref)
    assert got < losses.cross_entropy(h, W, tgt, chunk=5)  # fewer competitors: a smaller loss
    for a, b in zip(grads(got, h, W), grads(ref, h, W)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_label_smoothing_matches_torch_and_is_refused_with_masked_items():
    h, W, tgt = problem(4)
    got = losses.cross_entropy(h, W, tgt, chunk=5, smoothing=0.1)
    ref = F.cross_entropy(h @ W[1:].T, tgt - 1, label_smoothing=0.1)
    torch.testing.assert_close(got, ref)
    for a, b in zip(grads(got, h, W), grads(ref, h, W)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="label smoothing must be in"):
        losses.cross_entropy(h, W, tgt, smoothing=1.0)
    with pytest.raises(ValueError, match="cannot be combined"):
        losses.cross_entropy(h, W, tgt, masked=torch.zeros(len(tgt), 2, dtype=torch.long), smoothing=0.1)
