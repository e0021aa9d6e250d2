"""SASRec: causal self-attention over the item sequence (Kang & McAuley, ICDM 2018).

Built on the shared attention core (:mod:`attnrec.models.attention`). Defaults
follow the "SASRec+" recipe (full-softmax cross-entropy over the catalogue,
Klenitskiy & Vasilev 2023), which is much stronger than the original
one-negative BCE on sparse data.

Training (one pass covers every target of every sequence):

* A sequence ``s`` of length ``L`` gives inputs ``s[:-1]`` and shift-by-one
  targets ``s[1:]``. Sequences longer than ``max_len + 1`` are cut into windows
  of at most ``max_len`` inputs (from the end), so every target is trained
  exactly once per epoch.
* Windows are **right-padded** and grouped by length into batches (little
  padding). With causal attention, position ``t`` then sees exactly the prefix
  ``s[:t+1]`` with the same positional embeddings it gets at inference time, so
  training all positions at once equals training on every prefix separately.
* Output logits are computed only at real (non-padding) positions.

Losses (``loss=``):

* ``"ce"``: full softmax cross-entropy over all items (fused chunked kernel:
  logits, softmax and both gradients are computed chunk by chunk, the
  ``(N, n_items)`` logit matrix never exists in full).
* ``"sampled_softmax"``: softmax over the positive and ``n_negatives`` shared
  negatives sampled uniformly or by popularity (``negative_sampling``), with
  the logQ correction (Yi et al. 2019); accidental hits are masked.
* ``"bce"``: the original: one uniform negative per position, binary CE.
* ``"gbce"``: gSASRec (Petrov & Macdonald, RecSys 2023): ``n_negatives`` uniform
  negatives per position, positive probability raised to ``beta`` with
  ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``, ``alpha = n_negatives/(n_items-1)``,
  ``t = gbce_t``.

Large catalogues: with a sampled loss a step touches only the items of its
batch and its negatives, so ``sparse_grad`` (``"auto"``: on from 100,000 items)
gives the item tables row-sparse gradients, updated by ``SparseAdam`` and
all-reduced sparsely under DDP; per-step cost then follows the batch, not the
catalogue (``benchmarks/scale.py train``).

``mixer="lowpass"`` (the default; ``mixer="none"`` is plain SASRec) adds a
BSARec-style (Shin et al., AAAI 2024) inductive-bias branch beside
self-attention in every block: a *causal* low-pass filter (an exponentially
decaying average over the prefix with a learned time constant) plus a learned
per-channel re-weighting of the high-frequency residual,
``alpha * (low + beta * (x - low)) + (1 - alpha) * attention(x)``. (BSARec's
FFT filter is not causal, so it cannot be trained on all positions at once.)
It is the default because validation said so on Amazon Beauty: validation
NDCG@10 0.0650 with ``alpha=0.7`` against 0.0621 without the branch, best of
the first 16 epochs of each run (``benchmarks/RESULTS.md``); ``alpha=0.7`` is
BSARec's published value for Beauty, not tuned here.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.models.attention import AttentionConfig, TransformerBlock
from attnrec.models import losses
from attnrec.models.base import register
from attnrec.models.neural import NeuralSequenceModel
from attnrec.training import ValidationMetric

log = logging.getLogger(__name__)

LOSSES = ("ce", "sampled_softmax", "bce", "gbce")


# --------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------
class CausalLowPass(nn.Module):
    """Causal low-pass filter: exponentially decaying average over the prefix.

    ``low[t] = sum_{s<=t} w(t-s) x[s] / sum_{s<=t} w(t-s)`` with
    ``w(k) = exp(-k / tau)`` and a learned ``tau`` (init ``tau0``); output
    ``low + beta * (x - low)`` with a learned per-channel ``beta`` (BSARec's
    high-frequency re-weighting, init 1 = identity).
    """

    def __init__(self, d_model: int, tau0: float = 4.0):
        super().__init__()
        self.log_tau = nn.Parameter(torch.tensor(math.log(tau0)))
        self.beta = nn.Parameter(torch.zeros(1, 1, d_model))  # starts with no high-frequency part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        t = torch.arange(T, device=x.device, dtype=x.dtype)
        lag = t[:, None] - t[None, :]  # (T, T)
        w = torch.exp(-lag.clamp(min=0) / self.log_tau.exp().to(x.dtype)) * (lag >= 0)
        w = w / w.sum(1, keepdim=True)  # (T, T) rows sum to 1
        low = torch.einsum("ts,bsd->btd", w, x)  # (B, T, d)
        return low + self.beta * (x - low)


class SASRecNet(nn.Module):
    """Item + position embeddings -> causal transformer blocks -> hidden states."""

    def __init__(self, n_items: int, max_len: int, cfg: AttentionConfig, n_layers: int,
                 shared_embeddings: bool = True, mixer: str = "none", alpha: float = 0.5,
                 sparse_grad: bool = False):
        super().__init__()
        d = cfg.d_model
        self.n_items = n_items
        self.max_len = max_len
        self.cfg = cfg
        # sparse_grad: item tables get row-sparse gradients (SparseAdam in the training loop)
        self.sparse_grad = sparse_grad
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse_grad)
        self.pos_emb = nn.Embedding(max_len, d)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg, mixer=CausalLowPass(d) if mixer == "lowpass" else None, alpha=alpha)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.pre_ln else nn.Identity()
        self.out_emb = (None if shared_embeddings
                        else nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse_grad))
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    def output_weight(self) -> torch.Tensor:
        """``(n_items + 1, d)`` output item embeddings (row 0 = padding)."""
        return (self.out_emb if self.out_emb is not None else self.item_emb).weight

    def output_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Output embeddings of ``ids`` (any shape) -> ``ids.shape + (d,)``; row-sparse gradient if asked."""
        return F.embedding(ids, self.output_weight(), sparse=self.sparse_grad)

    def forward(self, seq: torch.Tensor, need_weights: bool = False):
        """``seq`` (B, T) right-padded item ids -> hidden (B, T, d) [, per-layer weights (B, H, T, T)]."""
        B, T = seq.shape
        x = self.item_emb(seq) * math.sqrt(self.cfg.d_model)  # (B, T, d)
        x = x + self.pos_emb.weight[:T]  # (B, T, d)
        x = self.emb_drop(x)
        weights = []
        for block in self.blocks:
            # right padding + causal mask: a real position never sees a padding key
            x, w = block(x, causal=True, need_weights=need_weights)  # (B, T, d)
            weights.append(w)
        x = self.ln_f(x)
        return (x, weights) if need_weights else x


# --------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------
def training_windows(data: SequenceData, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, lengths)`` into ``data.items``: inputs ``items[s:s+n]``, targets ``items[s+1:s+n+1]``.

    Every target of every sequence appears in exactly one window.
    """
    starts, lens = [], []
    for u in range(data.n_users):
        a, b = int(data.indptr[u]), int(data.indptr[u + 1])
        n_targets = b - a - 1
        end = b - 1  # exclusive end of inputs
        while n_targets > 0:
            n = min(max_len, n_targets)
            starts.append(end - n)
            lens.append(n)
            end -= n
            n_targets -= n
    return np.asarray(starts, dtype=np.int64), np.asarray(lens, dtype=np.int64)


def pad_right(histories: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``max_len`` items of each history, right-padded -> ``(seq (B, T), lengths (B,))``."""
    lens = np.array([min(len(h), max_len) for h in histories], dtype=np.int64)
    T = max(1, int(lens.max()) if len(lens) else 1)
    seq = np.zeros((len(histories), T), dtype=np.int64)
    for i, h in enumerate(histories):
        if lens[i]:
            seq[i, : lens[i]] = np.asarray(h[-lens[i]:], dtype=np.int64)
    return torch.from_numpy(seq), torch.from_numpy(lens)


# --------------------------------------------------------------------------
# the recommender
# --------------------------------------------------------------------------
@register("sasrec")
class SASRec(NeuralSequenceModel):
    """SASRec with a choice of training objective (default: full softmax CE).

    Hyperparameters are stored as given (scikit-learn style). ``dropout="auto"``
    resolves at fit time (``dropout_``) to 0.5 when the mean training sequence
    is shorter than 20 items (sparse data such as Amazon categories) and to 0.2
    otherwise (dense data such as MovieLens), following the SASRec paper. Training options
    (``epochs``, ``batch_size``, ``lr``, ...: the fields of :attr:`TrainConfig`)
    are keyword arguments too. With ``fit(data, valid, metric)`` training stops
    early on the validation metric and keeps the best epoch (``best_epoch_``);
    the recommended final protocol refits on train+valid for that many epochs
    (:meth:`refit_params`).
    """

    sequential = True

    def __init__(
        self,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        max_len: int = 50,
        dropout: float | str = "auto",
        attn_dropout: float | None = None,
        pre_ln: bool = True,
        similarity: str = "dot",
        top_k: int | None = None,
        shared_embeddings: bool = True,
        mixer: str = "lowpass",
        alpha: float = 0.7,
        loss: str = "ce",
        n_negatives: int = 256,
        negative_sampling: str = "uniform",
        gbce_t: float = 0.75,
        ce_chunk: int = 256,
        sparse_grad: bool | str = "auto",
        **train_options: Any,
    ):
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_len = max_len
        self.dropout = dropout
        self.attn_dropout = attn_dropout
        self.pre_ln = pre_ln
        self.similarity = similarity
        self.top_k = top_k
        self.shared_embeddings = shared_embeddings
        self.mixer = mixer
        self.alpha = alpha
        self.loss = loss
        self.n_negatives = n_negatives
        self.negative_sampling = negative_sampling
        self.gbce_t = gbce_t
        self.ce_chunk = ce_chunk
        self.sparse_grad = sparse_grad
        self._set_train_options(train_options)

    # ---- construction ----------------------------------------------------
    def _attention_config(self) -> AttentionConfig:
        return AttentionConfig(
            d_model=self.d_model, n_heads=self.n_heads, dropout=self._dropout_value(),
            attn_dropout=self.attn_dropout, similarity=self.similarity, top_k=self.top_k,
            pre_ln=self.pre_ln,
        )

    def _dropout_value(self) -> float:
        if self.dropout != "auto":
            return float(self.dropout)
        return float(getattr(self, "dropout_", 0.5))

    def _build(self, n_items: int) -> SASRecNet:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.mixer not in ("none", "lowpass"):
            raise ValueError(f"mixer must be 'none' or 'lowpass', got {self.mixer!r}")
        return SASRecNet(n_items, self.max_len, self._attention_config(), self.n_layers,
                         self.shared_embeddings, self.mixer, self.alpha,
                         sparse_grad=self._sparse_grad_value(n_items))

    #: catalogue size from which ``sparse_grad="auto"`` switches sparse gradients on
    SPARSE_GRAD_MIN_ITEMS: ClassVar[int] = 100_000

    def _sparse_grad_value(self, n_items: int) -> bool:
        """Row-sparse item-table gradients: only with a sampled loss (full CE touches every row).

        ``"auto"``: on for catalogues of at least :attr:`SPARSE_GRAD_MIN_ITEMS`
        items, where a dense ``(V, d)`` gradient, its AdamW update and (under DDP)
        its all-reduce would cost more per step than the batch itself.
        """
        if self.sparse_grad == "auto":
            return self.loss != "ce" and n_items >= self.SPARSE_GRAD_MIN_ITEMS
        if self.sparse_grad not in (True, False):
            raise ValueError(f"sparse_grad must be true, false or 'auto', got {self.sparse_grad!r}")
        if self.sparse_grad and self.loss == "ce":
            raise ValueError("sparse_grad=true needs a sampled loss (bce, gbce, sampled_softmax): "
                             "full-softmax 'ce' updates every item row")
        return bool(self.sparse_grad)

    # ---- fitting ---------------------------------------------------------
    def _fit(self, data: SequenceData, valid: EvalSet | None, metric: ValidationMetric | None) -> None:
        torch.manual_seed(self.seed)
        # "auto" dropout: the SASRec paper's values, 0.5 on sparse data with short
        # sequences (Amazon categories), 0.2 on dense data with long ones (MovieLens)
        mean_len = float(data.lengths.mean()) if data.n_users else 0.0
        self.dropout_ = (0.5 if mean_len < 20 else 0.2) if self.dropout == "auto" else float(self.dropout)
        self.net_ = self._build_for_fit(data.n_items)
        starts, lens = training_windows(data, self.max_len)
        if len(starts) == 0:
            raise ValueError("no training targets: every sequence has fewer than 2 items")
        counts = data.item_counts().astype(np.float64)
        self._neg_probs = None
        if self.negative_sampling == "popularity":
            p = counts[1:] / counts[1:].sum()
            self._neg_probs = torch.from_numpy(p)
        elif self.negative_sampling != "uniform":
            raise ValueError("negative_sampling must be 'uniform' or 'popularity'")
        bs = self.batch_size

        def batches(epoch: int, rng: np.random.Generator):
            # shuffle, then sort by length inside groups of 64 batches: little padding, random order
            perm = rng.permutation(len(starts))
            group = bs * 64
            order = []
            for g in range(0, len(perm), group):
                idx = perm[g : g + group]
                order.append(idx[np.argsort(lens[idx], kind="stable")])
            order = np.concatenate(order)
            chunks = [order[i : i + bs] for i in range(0, len(order), bs)]
            for j in rng.permutation(len(chunks)):
                sel = chunks[j]
                s, n = starts[sel], lens[sel]
                T = int(n.max())
                ar = np.arange(T)
                mask = ar[None, :] < n[:, None]  # (B, T)
                pos = np.where(mask, s[:, None] + ar[None, :], 0)
                seq = torch.from_numpy(np.where(mask, data.items[pos], 0))
                tgt = torch.from_numpy(np.where(mask, data.items[np.where(mask, pos + 1, 0)], 0))
                yield seq, tgt, torch.from_numpy(mask)

        def loss_fn(module, batch) -> torch.Tensor:
            seq, tgt, mask = batch
            h = module(seq)  # (B, T, d); ``module`` is the DDP wrapper of ``net`` when distributed
            return self._loss(h[mask], tgt[mask])  # (N, d), (N,)

        self._train_net(batches, loss_fn, valid, metric)
        self.n_train_targets_ = int(lens.sum())

    def _loss(self, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Loss for hidden states ``h`` (N, d) and target ids ``tgt`` (N,)."""
        W = self.net_.output_weight()  # (V + 1, d)
        V = W.shape[0] - 1
        if self.loss == "ce":
            return losses.cross_entropy(h, W, tgt, self.ce_chunk)
        rows = self.net_.output_rows  # gathers, so that sparse gradients stay sparse
        if self.loss == "bce":
            return losses.bce(h, tgt, rows, V)
        if self.loss == "gbce":
            return losses.gbce(h, tgt, rows, V, self.n_negatives, self.gbce_t)
        return losses.sampled_softmax(h, tgt, rows, V, self.n_negatives, self._neg_probs)

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Final hidden state of each history's last ``max_len`` items: ``(B, d)``."""
        self._check_fitted()
        self.net_.eval()
        seq, lens = pad_right(histories, self.max_len)
        h = self.net_(seq)  # (B, T, d)
        return h[torch.arange(len(lens)), (lens - 1).clamp(min=0)]  # (B, d)

    @torch.no_grad()
    def attention_weights(self, histories: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer attention weights over each history's last ``max_len`` items.

        Returns ``(weights, lengths)``: ``weights[l]`` is ``(B, H, T, T)`` for layer
        ``l`` (query position x key position, right-padded: history ``b``
        occupies positions ``0 .. lengths[b]-1``, oldest first); rows of real
        positions sum to 1 over their (causal) keys.
        """
        self._check_fitted()
        self.net_.eval()
        seq, lens = pad_right([np.asarray(h, dtype=np.int64) for h in histories], self.max_len)
        _, weights = self.net_(seq, need_weights=True)
        return [w.float() for w in weights], lens

    # ---- persistence -----------------------------------------------------
    def _extra_config(self) -> dict[str, Any]:
        return {**super()._extra_config(), "dropout": getattr(self, "dropout_", None)}

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        super()._load_extra_config(extra)
        if extra.get("dropout") is not None:
            self.dropout_ = float(extra["dropout"])
