"""Tests of the shared attention core (attnrec.models.attention)."""

import math

import pytest
import torch

from attnrec.models.attention import AttentionConfig, MultiHeadAttention, TransformerBlock, build_mask


def identity_attention(d: int, n_heads: int = 1, **kw) -> MultiHeadAttention:
    """An attention whose q/k/v/out projections are the identity (to check the maths by hand)."""
    m = MultiHeadAttention(d, n_heads, **kw)
    with torch.no_grad():
        m.in_proj.weight.copy_(torch.cat([torch.eye(d)] * 3))
        m.in_proj.bias.zero_()
        m.out_proj.weight.copy_(torch.eye(d))
        m.out_proj.bias.zero_()
    return m.eval()


@pytest.mark.parametrize("explicit", [False, True])
def test_single_key_gets_weight_one(explicit):
    # the textbook error: one query, one key, one value -> output is the value itself
    m = identity_attention(3)
    q = torch.tensor([[[1.0, 2.0, 3.0]]])
    k = torch.tensor([[[4.0, 5.0, 6.0]]])
    v = torch.tensor([[[7.0, 8.0, 9.0]]])
    # identity projections: feed k as key and v as value via a custom path
    qh, kh, vh = q[:, None], k[:, None], v[:, None]
    y, w = m._explicit(qh, kh, vh, 1 / math.sqrt(3), 1, 1, 1, False, None, None, None, 0.0)
    assert torch.equal(y.squeeze(), torch.tensor([7.0, 8.0, 9.0]))
    assert torch.equal(w.squeeze(), torch.tensor(1.0))
    y2 = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh)
    assert torch.allclose(y2.squeeze(), torch.tensor([7.0, 8.0, 9.0]))
    # and through the module (cross-attention, key_value = the single key/value token)
    m1 = identity_attention(3)
    out, w1 = m1(q, v, need_weights=True, explicit=explicit)
    assert torch.allclose(out.squeeze(), torch.tensor([7.0, 8.0, 9.0]))
    assert torch.allclose(w1.squeeze(), torch.tensor(1.0))


def test_two_keys_hand_computed():
    m = identity_attention(2)
    q = torch.tensor([[[1.0, 0.0]]])  # (B=1, Tq=1, d=2)
    kv = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # keys = values, (1, 2, 2)
    out, w = m(q, kv, need_weights=True)
    s1, s2 = 1 / math.sqrt(2), 0.0  # q.k / sqrt(2)
    w1 = math.exp(s1) / (math.exp(s1) + math.exp(s2))
    assert torch.allclose(w.squeeze(), torch.tensor([w1, 1 - w1]), atol=1e-6)
    assert torch.allclose(out.squeeze(), torch.tensor([w1, 1 - w1]), atol=1e-6)
    fast, _ = m(q, kv)
    assert torch.allclose(fast, out, atol=1e-6)


@pytest.mark.parametrize("similarity", ["dot", "cosine", "pearson"])
@pytest.mark.parametrize("masks", ["none", "causal", "padding", "causal+padding", "cross"])
def test_fast_and_explicit_paths_agree(similarity, masks):
    torch.manual_seed(0)
    m = MultiHeadAttention(16, 4, similarity=similarity).eval()
    x = torch.randn(3, 7, 16)
    kv = torch.randn(3, 5, 16) if masks == "cross" else None
    Tk = 5 if masks == "cross" else 7
    kpm = None
    if "padding" in masks or masks == "cross":
        kpm = torch.zeros(3, Tk, dtype=torch.bool)
        kpm[0, :2] = True
        kpm[1, -1] = True
        kpm[2, :] = True  # a fully padded row
    causal = "causal" in masks
    fast, none = m(x, kv, causal=causal, key_padding_mask=kpm)
    slow, w = m(x, kv, causal=causal, key_padding_mask=kpm, need_weights=True)
    assert none is None and w.shape == (3, 4, 7, Tk)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert not torch.isnan(fast).any() and not torch.isnan(w).any()


def test_fully_masked_rows_are_zero_not_nan():
    m = identity_attention(4, 2)
    x = torch.randn(2, 3, 4)
    kpm = torch.ones(2, 3, dtype=torch.bool)
    kpm[1] = False
    for explicit in (False, True):
        y, w = m(x, key_padding_mask=kpm, need_weights=True, explicit=explicit)
        assert torch.equal(w[0], torch.zeros_like(w[0]))
        assert torch.allclose(y[0], torch.zeros_like(y[0]))
        assert torch.allclose(w[1].sum(-1), torch.ones(2, 3))
        yf, _ = m(x, key_padding_mask=kpm)
        assert torch.allclose(yf[0], torch.zeros_like(yf[0])) and not torch.isnan(yf).any()


def test_causal_mask_future_does_not_change_past():
    torch.manual_seed(1)
    cfg = AttentionConfig(d_model=16, n_heads=2, dropout=0.0)
    block = TransformerBlock(cfg).eval()
    x = torch.randn(2, 6, 16)
    y, w = block(x, causal=True, need_weights=True)
    x2 = x.clone()
    x2[:, 4] += 10.0  # perturb position 4
    y2, _ = block(x2, causal=True)
    assert torch.allclose(y[:, :4], y2[:, :4], atol=1e-6)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    assert torch.all(w.triu(1) == 0)  # no weight above the diagonal


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_keeps_exactly_k_keys(k):
    torch.manual_seed(2)
    m = MultiHeadAttention(8, 2, top_k=k).eval()
    x = torch.randn(2, 6, 8)
    _, w = m(x, need_weights=True)
    assert ((w > 0).sum(-1) == k).all()
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))
    # the kept keys are the k highest-scoring ones
    q, kk, _ = m.project(x, None)
    scores = q @ kk.transpose(-2, -1)
    top = scores.topk(k, dim=-1).indices
    assert torch.equal((w > 0), torch.zeros_like(w, dtype=torch.bool).scatter_(-1, top, True))
    # with a causal mask, rows with fewer than k allowed keys keep all allowed ones
    _, wc = m(x, causal=True, need_weights=True)
    n_allowed = torch.arange(1, 7).clamp(max=k)
    assert torch.equal((wc > 0).sum(-1), n_allowed.expand_as(wc.sum(-1)))


def test_build_mask_shapes():
    kpm = torch.tensor([[True, False, False]])
    m = build_mask(1, 3, 3, causal=True, key_padding_mask=kpm)
    assert m.shape == (1, 1, 3, 3)
    assert m[0, 0].tolist() == [[False, False, False], [False, True, False], [False, True, True]]
    assert build_mask(2, 3, 3) is None


@pytest.mark.parametrize("pre_ln", [True, False])
def test_block_backward_and_similarity_temperature_learns(pre_ln):
    torch.manual_seed(3)
    cfg = AttentionConfig(d_model=8, n_heads=2, dropout=0.1, similarity="cosine", pre_ln=pre_ln)
    block = TransformerBlock(cfg).train()
    y, _ = block(torch.randn(2, 4, 8), causal=True)
    y.sum().backward()
    assert block.attn.log_temperature.grad is not None
    assert all(p.grad is not None for p in block.parameters())
