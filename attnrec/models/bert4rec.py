"""BERT4Rec: bidirectional self-attention with a Cloze objective (Sun et al., CIKM 2019).

Built on the shared attention core (:mod:`attnrec.models.attention`): the same
:class:`TransformerBlock` as SASRec, but **without** the causal mask, so every
position attends to every real (non-padding) item on both sides; padding is
excluded with a key padding mask.

Tokens: ``0`` padding, ``1..n_items`` items, ``n_items + 1`` the ``[MASK]``
token (a row of the *input* embedding table only; the output layer scores items
``0..n_items``, so the mask can never be recommended).

Training (Cloze / masked item prediction, re-drawn every epoch):

* each sequence is cut from the end into windows of at most ``max_len`` items;
* every position is replaced by ``[MASK]`` with probability ``mask_prob`` (at
  least one per window) and the model predicts the original items there;
* with probability ``last_mask_prob`` a window is instead masked **only at its
  last item**, exactly the inference situation (the original paper's extra
  "mask the last item" samples), which closes the train/inference gap;
* loss ``"ce"``: full softmax cross-entropy over the whole catalogue through the
  fused chunked kernel (:func:`attnrec.models.losses.cross_entropy`: the
  ``(N, n_items)`` logit matrix never exists in full); ``"sampled_softmax"``:
  softmax over the target and ``n_negatives`` shared uniform negatives
  (accidental hits masked).

Inference: the last ``max_len - 1`` history items followed by one ``[MASK]``;
the scores are the output layer applied to the mask position.

Positions are counted **from the end** of the sequence (the last token has
position 0, like the original left-padded implementation), so the appended
mask always sits at the same position the last training item did, whatever
the history length. Windows are right-padded and grouped by length into
batches, so batches carry little padding.

Output layer (as in BERT): hidden -> Linear -> GELU -> LayerNorm, then a dot
product with the (tied) item embeddings plus a per-item output bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn

from attnrec import privacy as dp
from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.models import losses
from attnrec.models.attention import AttentionConfig, BlockStack, TransformerBlock, init_weights
from attnrec.models.base import register
from attnrec.models.batching import cloze_windows, length_grouped_batches, pad_right, window_ids
from attnrec.models.neural import NeuralSequenceModel
from attnrec.training import ValidationMetric

LOSSES = ("ce", "sampled_softmax")


# --------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------
class BERT4RecNet(nn.Module):
    """Item + position embeddings -> bidirectional transformer blocks -> output head."""

    def __init__(self, n_items: int, max_len: int, cfg: AttentionConfig, n_layers: int):
        super().__init__()
        d = cfg.d_model
        self.n_items = n_items
        self.mask_id = n_items + 1
        self.max_len = max_len
        self.cfg = cfg
        self.item_emb = nn.Embedding(n_items + 2, d, padding_idx=0)  # + [MASK]
        self.pos_emb = nn.Embedding(max_len, d)  # position counted from the end
        self.emb_ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = BlockStack(TransformerBlock(cfg) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_ln else nn.Identity()
        # BERT's prediction head transform; output embeddings are tied to the input ones
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d, eps=cfg.layer_norm_eps))
        self.out_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.apply(init_weights)

    def output_weight(self) -> torch.Tensor:
        """``(n_items + 1, d + 1)`` output item embeddings, bias as last column (row 0 = padding)."""
        W = self.item_emb.weight[: self.n_items + 1]  # (V + 1, d), the [MASK] row excluded
        return torch.cat([W, self.out_bias[:, None]], dim=1)  # (V + 1, d + 1)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(N, d)`` -> output queries ``(N, d + 1)`` (last column 1, for the bias)."""
        z = self.head(h)  # (N, d)
        return torch.cat([z, torch.ones_like(z[:, :1])], dim=1)  # (N, d + 1)

    def forward(self, seq: torch.Tensor, need_weights: bool = False):
        """``seq`` (B, T) right-padded ids -> hidden (B, T, d) [, per-layer weights (B, H, T, T)]"""
        B, T = seq.shape
        pad = seq == 0  # (B, T) True = padding
        lens = (~pad).sum(1, keepdim=True)  # (B, 1)
        pos = (lens - 1 - torch.arange(T, device=seq.device)[None, :]).clamp(min=0)  # (B, T)
        x = self.item_emb(seq) + self.pos_emb(pos)  # (B, T, d)
        x = self.emb_drop(self.emb_ln(x))
        # bidirectional: no causal mask, only padding keys are hidden
        x, weights = self.blocks(x, key_padding_mask=pad, need_weights=need_weights)  # (B, T, d)
        x = self.ln_f(x)
        return (x, weights) if need_weights else x


# --------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------
def cloze_mask(lens: np.ndarray, T: int, mask_prob: float, last_mask_prob: float,
               rng: np.random.Generator) -> np.ndarray:
    """Bool ``(B, T)``: positions to mask in right-padded windows of lengths ``lens``.

    Each real position with probability ``mask_prob``, at least one per window;
    a window drawn with probability ``last_mask_prob`` is masked only at its last item.
    """
    B = len(lens)
    real = np.arange(T)[None, :] < lens[:, None]  # (B, T)
    m = (rng.random((B, T)) < mask_prob) & real
    rows = np.arange(B)
    empty = ~m.any(1)
    m[rows[empty], rng.integers(0, lens[empty])] = True  # at least one target per window
    last_only = rng.random(B) < last_mask_prob
    m[last_only] = False
    m[rows[last_only], lens[last_only] - 1] = True
    return m


def crop_last_only(seq: np.ndarray, m: np.ndarray, lens: np.ndarray, rng: np.random.Generator) -> None:
    """In place: every window masked only at its last item is cut to a random prefix of >= 2 items.

    The mask moves to the prefix's last item, so "predict the item after this
    history" is trained at every position of a sequence, not only its end (the
    inference situation, drawn afresh each epoch).
    """
    rows = np.flatnonzero((m.sum(1) == 1) & m[np.arange(len(lens)), lens - 1])
    if not len(rows):
        return
    new = rng.integers(2, lens[rows] + 1)  # (R,) prefix lengths
    keep = np.arange(seq.shape[1])[None, :] < new[:, None]  # (R, T)
    seq[rows] = np.where(keep, seq[rows], 0)
    m[rows] = False
    m[rows, new - 1] = True


def pad_right_with_mask(histories: Sequence[np.ndarray], max_len: int, mask_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``max_len - 1`` items of each history + ``[MASK]``, right-padded.

    Returns ``(seq (B, T), lengths (B,))``; history ``b`` fills positions
    ``0 .. lengths[b] - 1`` and its mask sits at position ``lengths[b]``.
    """
    seq, lens = pad_right(histories, max_len - 1, extra=1)
    seq[torch.arange(len(lens)), lens] = mask_id
    return seq, lens


# --------------------------------------------------------------------------
# the recommender
# --------------------------------------------------------------------------
@register("bert4rec")
class BERT4Rec(NeuralSequenceModel):
    """BERT4Rec (masked item prediction with a bidirectional transformer).

    Training options (``epochs``, ``batch_size``, ``lr``, ...: the fields of
    :attr:`TrainConfig`) are keyword arguments too. With ``fit(data, valid, metric)``
    training stops early on the validation metric and keeps the best epoch (``best_epoch_``);
    :meth:`refit_params` gives the settings for the final refit on train+valid
    (used by :func:`attnrec.pipeline.fit_for_test`).

    Defaults chosen on Amazon Beauty's *validation* split (``benchmarks/RESULTS.md``):
    dropout 0.1 (validation NDCG@10 0.0405 at epoch 42 against 0.0390 at epoch 40 with
    0.2 and 0.027 with 0.5), and the learning rate halved after every 3 evaluations
    without improvement (``lr_decay_patience``), since BERT4Rec's validation metric
    creeps up for many epochs and a constant rate leaves it noisy at the end.
    """

    @dataclass
    class TrainConfig(NeuralSequenceModel.TrainConfig):
        """BERT4Rec's training defaults (the fields are its hyperparameters too)."""

        batch_size: int = 64
        lr: float = 2e-3
        lr_decay_patience: int | None = 3

    #: hyperparameters that make ``fit`` take about a second on tiny data (conformance tests)
    attention_causal = False  # every position attends both ways
    attention_extra = 1  # the appended [MASK] is the position that scores the candidates
    smoke_params: ClassVar[dict[str, Any]] = dict(d_model=16, n_heads=2, n_layers=1, max_len=16,
                                                  epochs=2, batch_size=256)

    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 50,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        pre_ln: bool = True,
        mask_prob: float = 0.4,
        last_mask_prob: float = 0.2,
        last_mask_crop: bool = False,
        loss: str = "ce",
        n_negatives: int = 256,
        ce_chunk: int = 256,
        **train_options: Any,
    ):
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_len = max_len
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        self.pre_ln = pre_ln
        self.mask_prob = mask_prob
        self.last_mask_prob = last_mask_prob
        self.last_mask_crop = last_mask_crop
        self.loss = loss
        self.n_negatives = n_negatives
        self.ce_chunk = ce_chunk
        self._set_train_options(train_options)

    # ---- construction ----------------------------------------------------
    def _attention_config(self) -> AttentionConfig:
        return AttentionConfig(
            d_model=self.d_model, n_heads=self.n_heads, dropout=self.dropout,
            attn_dropout=self.attn_dropout, pre_ln=self.pre_ln,
        )

    def _build(self, n_items: int) -> BERT4RecNet:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.max_len < 2:
            raise ValueError(f"max_len must be >= 2 (history + mask), got {self.max_len}")
        if not 0.0 < self.mask_prob <= 1.0 or not 0.0 <= self.last_mask_prob <= 1.0:
            raise ValueError("mask_prob must be in (0, 1] and last_mask_prob in [0, 1]")
        return BERT4RecNet(n_items, self.max_len, self._attention_config(), self.n_layers)

    # ---- fitting ---------------------------------------------------------
    def _fit(self, data: SequenceData, valid: EvalSet | None, metric: ValidationMetric | None) -> None:
        torch.manual_seed(self.seed)
        self.net_ = self._build_for_fit(data)
        if self.private:
            return self._fit_private(data)
        starts, lens = cloze_windows(data, self.max_len)
        if len(starts) == 0:
            raise ValueError("no training windows: every sequence has fewer than 2 items")
        net = self.net_

        def batches(epoch: int, rng: np.random.Generator):
            for sel in length_grouped_batches(lens, self.batch_size, rng):
                yield self._cloze_batch(data, starts[sel], lens[sel], rng)

        def loss_fn(module, batch) -> torch.Tensor:
            inp, seq, m = batch
            h = module(inp)  # (B, T, d); ``module`` is the DDP wrapper of ``net`` when distributed
            return self._loss(net.project(h[m]), seq[m])  # (N, d + 1), (N,)

        self._train_net(batches, loss_fn, valid, metric)

    def _cloze_batch(self, data: SequenceData, starts: np.ndarray, lens: np.ndarray,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked windows -> ``(inputs, items, mask)``, each ``(B, T)``, ``T = lens.max()``."""
        seq, _ = window_ids(data.items, starts, lens)  # (B, T)
        m = cloze_mask(lens, seq.shape[1], self.mask_prob, self.last_mask_prob, rng)  # (B, T)
        if self.last_mask_crop:
            crop_last_only(seq, m, lens, rng)
        inp = np.where(m, self.net_.mask_id, seq)
        return torch.from_numpy(inp), torch.from_numpy(seq), torch.from_numpy(m)

    def _fit_private(self, data: SequenceData) -> None:
        """User-level DP-SGD (:mod:`attnrec.privacy`): one row per user, their last
        ``max_len`` items (older ones are not used), Poisson-sampled, clipped per row."""
        users = np.flatnonzero(data.lengths >= 2)
        if len(users) == 0:
            raise ValueError("no training windows: every sequence has fewer than 2 items")
        lens = np.minimum(data.lengths[users], self.max_len).astype(np.int64)
        starts = data.indptr[users + 1].astype(np.int64) - lens
        hook = self._privacy_hook(data.n_users, len(users))
        size = self.privacy_microbatch

        def batches(epoch: int, rng: np.random.Generator):
            for rows in hook.sample_rows(rng):  # one Poisson batch -> its micro-batches
                yield [self._cloze_batch(data, starts[m], lens[m], rng)
                       for m in dp.microbatches(rows, lens, size)]

        def loss_fn(module, batch) -> torch.Tensor:
            inp, seq, m = batch
            h = module(inp)  # (B, T, d)
            z = module.project(h.flatten(0, 1)).view(*h.shape[:2], -1)  # (B, T, d + 1)
            return dp.per_row_cross_entropy(z, module.output_weight(), seq, m)  # (B,)

        self._train_net(batches, loss_fn, None, None, privacy=hook)

    def _loss(self, z: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Loss for output queries ``z`` (N, d + 1) and target ids ``tgt`` (N,)."""
        W = self.net_.output_weight()  # (V + 1, d + 1)
        if self.loss == "ce":
            return losses.cross_entropy(z, W, tgt, self.ce_chunk)
        return losses.sampled_softmax(z, tgt, lambda ids: W[ids], W.shape[0] - 1, self.n_negatives)

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Output query at the appended ``[MASK]``: ``(B, d + 1)`` (scores = ``encode @ W.T``)."""
        self._check_fitted()
        self.net_.eval()
        seq, lens = pad_right_with_mask(histories, self.max_len, self.net_.mask_id)
        h = self.net_(seq)  # (B, T, d)
        return self.net_.project(h[torch.arange(len(lens)), lens])  # (B, d + 1)

    @torch.no_grad()
    def attention_weights(self, histories: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer attention weights over each history's last ``max_len - 1`` items and the mask.

        Returns ``(weights, lengths)``: ``weights[l]`` is ``(B, H, T, T)`` for layer
        ``l`` (query x key position, right-padded): history ``b`` occupies positions
        ``0 .. lengths[b] - 1`` (oldest first) and its appended ``[MASK]`` sits at
        position ``lengths[b]``; that row is the explanation of the scores. Rows of
        real positions sum to 1 over the ``lengths[b] + 1`` real keys (both directions).
        """
        self._check_fitted()
        self.net_.eval()
        seq, lens = pad_right_with_mask([np.asarray(h, dtype=np.int64) for h in histories],
                                        self.max_len, self.net_.mask_id)
        _, weights = self.net_(seq, need_weights=True)
        return [w.float() for w in weights], lens

    def explain_weights(self, history: np.ndarray, item: int | None = None) -> np.ndarray:
        """Attention rollout from the ``[MASK]`` position onto the visible history items (sum 1).

        The same for every candidate ``item``; :meth:`explain_items` makes it per item.
        """
        return self.attention_maps([np.asarray(history, dtype=np.int64)]).query_weights(0, "rollout")
