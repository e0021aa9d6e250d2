"""The SASRec network (nanoGPT style: a config, small modules, short forwards).

Item + position embeddings -> causal :class:`~attnrec.models.attention.TransformerBlock`
stack -> hidden states ``(B, T, d)``; the scores of the next item are the dot
products of a hidden state with the output item embeddings (tied to the input
ones unless ``shared_embeddings=False``). The attention itself (fast SDPA path
beside the explicit path that returns the weights) is in
:mod:`attnrec.models.attention`.

``mixer="lowpass"`` adds a BSARec-style (Shin et al., AAAI 2024) inductive-bias
branch beside self-attention in every block: a *causal* low-pass filter (an
exponentially decaying average over the prefix with a learned time constant)
plus a learned per-channel re-weighting of the high-frequency residual,
``alpha * (low + beta * (x - low)) + (1 - alpha) * attention(x)``. (BSARec's
FFT filter is not causal, so it cannot be trained on all positions at once.)

``positions="relative"`` drops the position embedding for a learned bias of the
attention scores by the lag between query and key (one value per head and lag,
shared by the layers; T5-style without buckets). Every computation then depends
on offsets only, so a window's position ``t`` is computed exactly as the prefix
sample ending at ``t`` would be: training on all positions at once equals training
on every prefix, and ``align`` no longer matters (except where the padding goes).

``align`` places the positional indices: ``"left"`` = right-padded input, the
oldest item of a window at index 0; ``"right"`` = left-padded input, the newest
item always at index ``max_len - 1`` (padding keys are masked, in attention and
in the low-pass branch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnrec.models.attention import (AttentionConfig, BlockStack, Dropout, TransformerBlock, init_weights,
                                      under_transform)

MIXERS = ("none", "lowpass")
ALIGNS = ("left", "right")
POSITIONS = ("absolute", "relative")


@dataclass
class SASRecConfig:
    """Shape and options of a :class:`SASRecNet`."""

    n_items: int
    max_len: int = 50  # positions (the last max_len items of a history are seen)
    n_layers: int = 2
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    shared_embeddings: bool = True  # output item embeddings tied to the input ones
    mixer: str = "none"  # "none" | "lowpass" (a causal low-pass branch beside attention)
    alpha: float = 0.5  # weight of the mixer branch
    sparse_grad: bool = False  # item tables get row-sparse gradients (SparseAdam in the training loop)
    align: str = "left"  # "left": oldest item at position 0; "right": newest item at position max_len - 1
    emb_ln: bool = False  # LayerNorm on item + position embeddings (BSARec/BERT style)
    scale_emb: bool = True  # item embeddings times sqrt(d_model) before the positions are added
    input_item_dropout: float = 0.0  # training only: each input item's embedding is zeroed with this probability
    positions: str = "absolute"  # "absolute": a position embedding added to the items; "relative": see below


class CausalLowPass(nn.Module):
    """Causal low-pass filter: exponentially decaying average over the prefix.

    ``low[t] = sum_{s<=t} w(t-s) x[s] / sum_{s<=t} w(t-s)`` with
    ``w(k) = exp(-k / tau)`` and a learned ``tau`` (init ``tau0``); output
    ``low + beta * (x - low)`` with a learned per-channel ``beta`` (BSARec's
    high-frequency re-weighting, init 0: low-pass only).
    """

    def __init__(self, d_model: int, tau0: float = 4.0):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau0)))
        self.beta = nn.Parameter(torch.zeros(1, 1, d_model))  # starts with no high-frequency part

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = x.shape[1]
        t = torch.arange(T, device=x.device, dtype=x.dtype)
        lag = t[:, None] - t[None, :]  # (T, T)
        w = torch.exp(-lag.clamp(min=0) / self.log_tau.exp().to(x.dtype)) * (lag >= 0)
        if key_padding_mask is None:
            w = w / w.sum(1, keepdim=True)  # (T, T) rows sum to 1
            low = torch.einsum("ts,bsd->btd", w, x)  # (B, T, d)
        else:  # left padding: padding keys get no weight
            w = w[None] * (~key_padding_mask)[:, None, :].to(x.dtype)  # (B, T, T)
            w = w / w.sum(2, keepdim=True).clamp_min(1e-12)
            low = torch.einsum("bts,bsd->btd", w, x)  # (B, T, d)
        return low + self.beta * (x - low)


class SASRecNet(nn.Module):
    """Item + position embeddings -> causal transformer blocks -> hidden states."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if cfg.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {cfg.mixer!r}")
        if cfg.align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {cfg.align!r}")
        if cfg.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {cfg.positions!r}")
        att = cfg.attention
        d = att.d_model
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, d, padding_idx=0, sparse=cfg.sparse_grad)
        relative = cfg.positions == "relative"
        self.pos_emb = None if relative else nn.Embedding(cfg.max_len, d)
        # (H, max_len) bias by lag 0..max_len-1; zero at the start (no preference)
        self.lag_bias = nn.Parameter(torch.zeros(att.n_heads, cfg.max_len)) if relative else None
        self.emb_ln = nn.LayerNorm(d, eps=att.layer_norm_eps) if cfg.emb_ln else nn.Identity()
        self.emb_drop = Dropout(att.dropout)
        self.blocks = BlockStack(
            TransformerBlock(att, mixer=CausalLowPass(d) if cfg.mixer == "lowpass" else None, alpha=cfg.alpha)
            for _ in range(cfg.n_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=att.layer_norm_eps) if att.pre_ln else nn.Identity()
        self.out_emb = (None if cfg.shared_embeddings
                        else nn.Embedding(cfg.n_items + 1, d, padding_idx=0, sparse=cfg.sparse_grad))
        self.apply(init_weights)

    def output_weight(self) -> torch.Tensor:
        """``(n_items + 1, d)`` output item embeddings (row 0 = padding)."""
        return (self.out_emb if self.out_emb is not None else self.item_emb).weight

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Output embeddings of ``ids`` (any shape) -> ``ids.shape + (d,)``; row-sparse gradient if asked."""
        return F.embedding(ids, self.output_weight(), sparse=self.cfg.sparse_grad)

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        """Input item embeddings of ``seq`` (B, T) -> (B, T, d)."""
        return self.item_emb(seq)

    def lag_scores(self, T: int) -> torch.Tensor:
        """``positions="relative"``: the score bias ``(1, H, T, T)`` of query ``i`` for key ``j``, by lag ``i - j``
        (lags beyond ``max_len - 1`` share the last value; keys after the query are masked anyway)."""
        t = torch.arange(T)
        lag = (t[:, None] - t[None, :]).clamp(0, self.cfg.max_len - 1)  # (T, T)
        return self.lag_bias[:, lag][None]

    def forward(self, seq: torch.Tensor, need_weights: bool = False):
        """``seq`` (B, T) padded item ids (see ``align``) -> hidden (B, T, d) [, per-layer weights (B, H, T, T)]."""
        T = seq.shape[1]
        x = self.embed(seq)  # (B, T, d)
        if self.training and self.cfg.input_item_dropout > 0:  # the item is hidden, its position stays
            keep = torch.rand(seq.shape, device=x.device) >= self.cfg.input_item_dropout  # (B, T)
            x = x * keep[..., None].to(x.dtype)
        if self.cfg.scale_emb:
            x = x * math.sqrt(self.cfg.attention.d_model)
        right = self.cfg.align == "right"
        if self.pos_emb is not None:  # right: the newest item at index max_len - 1; left: the oldest at 0
            start = self.cfg.max_len - T if right else 0
            x = x + self.pos_emb.weight[start:start + T]
        pad = None  # right padding + causal mask: padding is never a key
        if right:
            pad = seq == 0  # (B, T) left padding: causal alone would let queries see it
            # no mask without padding (the fused SDPA kernel); under torch.func transforms (per-user
            # DP gradients) a data-dependent branch is not allowed: the mask is always passed there
            if not under_transform(seq) and not bool(pad.any()):
                pad = None
        x = self.emb_drop(self.emb_ln(x))  # (B, T, d)
        bias = None if self.lag_bias is None else self.lag_scores(T)  # (1, H, T, T)
        x, weights = self.blocks(x, causal=True, key_padding_mask=pad, attn_bias=bias,
                                 need_weights=need_weights)  # (B, T, d)
        x = self.ln_f(x)
        return (x, weights) if need_weights else x
