"""The one attention core of attnrec (nanoGPT style: a config, small modules).

Every attention model in the project (SASRec, BERT4Rec, the DIN-style target
attention ranker, ...) builds on :class:`MultiHeadAttention` and
:class:`TransformerBlock` from this file.

Shapes: ``B`` batch, ``Tq`` queries, ``Tk`` keys, ``H`` heads, ``d`` model
width, ``dk = d / H`` head width.

Masks (one convention everywhere):

* ``key_padding_mask``: bool ``(B, Tk)``, **True = padding** (never attended).
* ``attn_mask``: bool, broadcastable to ``(B, H, Tq, Tk)``, **True = may attend**
  (the ``scaled_dot_product_attention`` convention).
* ``causal=True``: query ``i`` may attend keys ``j <= i + (Tk - Tq)`` (aligned
  at the end, so ``Tq == Tk`` is the usual lower triangle).
* ``attn_bias``: float, broadcastable to ``(B, H, Tq, Tk)``, added to the scaled
  scores before the softmax (e.g. SASRec's relative-position bias); masked keys
  stay masked.

A query row with no allowed key (e.g. a padding query under a causal mask on a
left-padded sequence, or a history made only of padding) outputs **zeros** and
has all-zero attention weights, never NaN.

Two computation paths give the same numbers:

* fast: ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels);
* explicit: ``softmax(Q K^T / sqrt(dk)) V`` that also returns the weights
  ``(B, H, Tq, Tk)``. It is used when ``need_weights=True`` or ``top_k`` is set,
  and in training with attention dropout (its mask is drawn by :func:`fast_dropout`).

Similarities: ``"dot"`` (scaled dot product), ``"cosine"`` (cosine of q and k
times a learned per-head temperature), ``"pearson"`` (cosine of the centred
vectors, i.e. Pearson correlation over the head dimensions, times a learned
temperature). Non-dot similarities pre-normalise q and k, so they still use the
fast path (with the temperature folded into q and ``scale=1``).

``top_k``: sparse attention; per query only the ``k`` highest-scoring allowed
keys keep weight (exactly ``k``; exact score ties are resolved by ``torch.topk``), the rest get
``-inf`` before the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

SIMILARITIES = ("dot", "cosine", "pearson")


@dataclass
class AttentionConfig:
    """Hyperparameters of a stack of :class:`TransformerBlock`."""

    d_model: int = 64
    n_heads: int = 2
    dropout: float = 0.2  # residual / FFN dropout
    attn_dropout: float | None = None  # dropout on attention weights (None = dropout)
    similarity: str = "dot"
    top_k: int | None = None
    ffn_mult: int = 4  # FFN hidden width = ffn_mult * d_model
    activation: str = "gelu"  # "gelu" | "relu"
    pre_ln: bool = True  # pre-LayerNorm (True) or post-LayerNorm (original Transformer / SASRec paper)
    bias: bool = True
    layer_norm_eps: float = 1e-6


def under_transform(x: torch.Tensor) -> bool:
    """Whether ``x`` is traced by a torch.func transform (vmap/grad: per-user DP gradients), where
    data-dependent branches and per-row in-place random draws are not allowed."""
    return torch._C._functorch.maybe_get_level(x) != -1


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout whose mask takes four 15-bit uniform lanes from each 64-bit random draw.

    torch's CPU dropout draws one random number per element through a scalar
    generator; at these model sizes that was 41% of a SASRec training step
    (profiled). The drop probability is rounded to a multiple of 2**-15.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    if under_transform(x):
        # inside torch.func transforms (per-user DP gradients under vmap): in-place draws on a
        # fresh tensor cannot differ per row there, torch's dropout can
        return torch.nn.functional.dropout(x, p, True)
    n = x.numel()
    lanes = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_().view(torch.int16)
    thr = round(p * 32768)
    keep = (lanes[:n].view(x.shape) & 0x7FFF) >= thr  # P(keep) = 1 - thr / 2**15
    return x * keep.to(x.dtype).mul_(32768.0 / (32768 - thr))


class Dropout(nn.Module):
    """``nn.Dropout`` drawn by :func:`fast_dropout` (same expectation, much cheaper masks on CPU)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def build_mask(
    B: int,
    Tq: int,
    Tk: int,
    *,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """Combine causal / padding / explicit masks into one bool ``allowed`` mask.

    Returns ``None`` when everything is allowed, else a bool tensor
    broadcastable to ``(B, H, Tq, Tk)`` with True = may attend.
    """
    allowed = None
    if causal:
        i = torch.arange(Tq, device=device)[:, None]
        j = torch.arange(Tk, device=device)[None, :]
        allowed = (j <= i + (Tk - Tq))[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        kp = ~key_padding_mask.to(torch.bool)[:, None, None, :]  # (B, 1, 1, Tk)
        allowed = kp if allowed is None else allowed & kp
    if attn_mask is not None:
        am = attn_mask.to(torch.bool)
        while am.dim() < 4:
            am = am.unsqueeze(0) if am.dim() < 3 else am.unsqueeze(1)
        allowed = am if allowed is None else allowed & am
    return allowed


class MultiHeadAttention(nn.Module):
    """Multi-head attention for self-attention and cross/target attention.

    ``forward(query, key_value=None, ...)``: with ``key_value=None`` the keys
    and values come from ``query`` (self-attention); otherwise queries come from
    ``query`` ``(B, Tq, d)`` and keys/values from ``key_value`` ``(B, Tk, d)``
    (e.g. DIN-style target attention with a single candidate query, ``Tq = 1``).
    Returns ``(out (B, Tq, d), weights (B, H, Tq, Tk) or None)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        similarity: str = "dot",
        top_k: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.similarity = similarity
        self.top_k = top_k
        # q, k, v projections in one weight (one matmul for self-attention)
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        if similarity != "dot":
            # learned per-head temperature (log-parametrised), starts at sqrt(dk)
            self.log_temperature = nn.Parameter(torch.full((n_heads,), 0.5 * math.log(self.d_head)))

    # -- helpers -----------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, dk)

    def project(self, query: torch.Tensor, key_value: torch.Tensor | None):
        """Per-head q, k, v, each ``(B, H, T, dk)``."""
        if key_value is None:
            q, k, v = self.in_proj(query).split(self.d_model, dim=-1)  # 3 x (B, T, d)
        else:
            w, b = self.in_proj.weight, self.in_proj.bias
            d = self.d_model
            q = F.linear(query, w[:d], None if b is None else b[:d])  # (B, Tq, d)
            k, v = F.linear(key_value, w[d:], None if b is None else b[d:]).split(d, dim=-1)  # (B, Tk, d)
        return self._heads(q), self._heads(k), self._heads(v)

    def _normalise(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Apply the similarity: returns q, k and the scale so that score = scale * q.k."""
        if self.similarity == "dot":
            return q, k, 1.0 / math.sqrt(self.d_head)
        if self.similarity == "pearson":
            q = q - q.mean(dim=-1, keepdim=True)
            k = k - k.mean(dim=-1, keepdim=True)
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        temp = self.log_temperature.exp().view(1, -1, 1, 1).to(q.dtype)  # (1, H, 1, 1)
        return q * temp, k, 1.0

    # -- forward -----------------------------------------------------------
    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor | None = None,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        need_weights: bool = False,
        explicit: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, Tq, _ = query.shape
        Tk = Tq if key_value is None else key_value.shape[1]
        q, k, v = self.project(query, key_value)  # (B, H, Tq, dk), (B, H, Tk, dk) x2
        q, k, scale = self._normalise(q, k)
        p_drop = self.dropout if self.training else 0.0
        # attention dropout goes through the explicit path: SDPA's own dropout draws its mask slowly
        use_explicit = explicit or need_weights or self.top_k is not None or p_drop > 0

        if not use_explicit:
            if causal and key_padding_mask is None and attn_mask is None and attn_bias is None and Tq == Tk:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True, scale=scale)
            else:
                allowed = build_mask(
                    B, Tq, Tk, causal=causal, key_padding_mask=key_padding_mask,
                    attn_mask=attn_mask, device=query.device,
                )
                empty = None
                if allowed is not None:
                    empty = ~allowed.any(dim=-1, keepdim=True)  # (B|1, H|1, Tq, 1) rows with no key
                    # let empty rows attend everything (no NaN), zero them afterwards
                    allowed = allowed | empty
                mask = allowed
                if attn_bias is not None:  # additive float mask: the bias where allowed, -inf elsewhere
                    mask = attn_bias.to(q.dtype)
                    if allowed is not None:
                        mask = mask.masked_fill(~allowed, float("-inf"))
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop, scale=scale)
                if empty is not None:  # unconditional: no data-dependent branch (torch.func.vmap under DP)
                    y = y.masked_fill(empty, 0.0)
            weights = None
        else:
            y, weights = self._explicit(q, k, v, scale, B, Tq, Tk, causal, key_padding_mask, attn_mask, attn_bias,
                                        p_drop)

        y = y.transpose(1, 2).reshape(B, Tq, self.d_model)  # (B, Tq, d)
        return self.out_proj(y), (weights if need_weights else None)

    def _explicit(self, q, k, v, scale, B, Tq, Tk, causal, key_padding_mask, attn_mask, attn_bias, p_drop):
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
        if attn_bias is not None:
            scores = scores + attn_bias
        allowed = build_mask(
            B, Tq, Tk, causal=causal, key_padding_mask=key_padding_mask,
            attn_mask=attn_mask, device=q.device,
        )
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if self.top_k is not None and self.top_k < Tk:
            # keep exactly top_k keys per query (exact score ties: whichever torch.topk returns;
            # masked keys are -inf and only kept if fewer than k keys are allowed, where they stay -inf)
            idx = scores.topk(self.top_k, dim=-1).indices  # (B, H, Tq, k)
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True)
            scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1)  # (B, H, Tq, Tk)
        # rows where every key is -inf give NaN: make them all-zero
        weights = torch.nan_to_num(weights, nan=0.0).to(q.dtype)
        w = fast_dropout(weights, p_drop) if p_drop > 0 else weights
        y = w @ v  # (B, H, Tq, dk)
        return y, weights


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> activation -> dropout -> Linear."""

    def __init__(self, d_model: int, hidden: int, dropout: float, activation: str = "gelu", bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, d_model, bias=bias)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))  # (B, T, d)


class TransformerBlock(nn.Module):
    """Attention + FFN with residuals, pre-LN or post-LN.

    An optional ``mixer`` module (``mixer(x (B, T, d), key_padding_mask) -> (B, T, d)``,
    padding positions must not leak into real ones) is added beside self-attention:
    ``mix = alpha * mixer(x) + (1 - alpha) * attn(x)`` (used by
    the BSARec-style frequency branch of SASRec); ``None`` = plain attention.
    """

    def __init__(self, cfg: AttentionConfig, mixer: nn.Module | None = None, alpha: float = 0.5):
        super().__init__()
        self.cfg = cfg
        attn_drop = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, attn_drop, cfg.similarity, cfg.top_k, cfg.bias)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult * cfg.d_model, cfg.dropout, cfg.activation, cfg.bias)
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.drop1 = Dropout(cfg.dropout)
        self.drop2 = Dropout(cfg.dropout)
        self.mixer = mixer
        self.alpha = alpha

    def _mix(self, x, causal, key_padding_mask, attn_mask, attn_bias, need_weights):
        a, w = self.attn(x, causal=causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                         attn_bias=attn_bias, need_weights=need_weights)  # (B, T, d)
        if self.mixer is not None:
            a = self.alpha * self.mixer(x, key_padding_mask) + (1.0 - self.alpha) * a
        return a, w

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        attn_bias: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.cfg.pre_ln:
            a, w = self._mix(self.ln1(x), causal, key_padding_mask, attn_mask, attn_bias, need_weights)
            x = x + self.drop1(a)  # (B, T, d)
            x = x + self.drop2(self.ffn(self.ln2(x)))
        else:
            a, w = self._mix(x, causal, key_padding_mask, attn_mask, attn_bias, need_weights)
            x = self.ln1(x + self.drop1(a))
            x = self.ln2(x + self.drop2(self.ffn(x)))
        return x, w


class BlockStack(nn.ModuleList):
    """:class:`TransformerBlock` layers applied in order; returns ``(x, per-layer weights)``."""

    def forward(self, x: torch.Tensor, *, need_weights: bool = False, **masks
                ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        weights = []
        for block in self:
            x, w = block(x, need_weights=need_weights, **masks)  # (B, T, d)
            weights.append(w)
        return x, weights


def init_weights(m: nn.Module) -> None:
    """GPT-style initialisation (``module.apply(init_weights)``): N(0, 0.02), zero biases and padding rows."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
