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
from attnrec.models.attention import AttentionConfig, Dropout, TransformerBlock
from attnrec.models.base import register
from attnrec.models.neural import NeuralSequenceModel

log = logging.getLogger(__name__)

LOSSES = ("ce", "sampled_softmax", "bce", "gbce")
TRAININGS = ("positions", "prefixes")
ALIGNS = ("left", "right")


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
    """Item + position embeddings -> causal transformer blocks -> hidden states.

    ``align`` places the positional indices: ``"left"`` = right-padded input,
    the oldest item of a window at index 0; ``"right"`` = left-padded input,
    the newest item always at index ``max_len - 1`` (padding keys are masked).
    """

    def __init__(self, n_items: int, max_len: int, cfg: AttentionConfig, n_layers: int,
                 shared_embeddings: bool = True, mixer: str = "none", alpha: float = 0.5,
                 sparse_grad: bool = False, align: str = "left", emb_ln: bool = False,
                 scale_emb: bool = True):
        super().__init__()
        d = cfg.d_model
        self.n_items = n_items
        self.max_len = max_len
        self.cfg = cfg
        self.align = align
        self.scale = math.sqrt(d) if scale_emb else 1.0
        # sparse_grad: item tables get row-sparse gradients (SparseAdam in the training loop)
        self.sparse_grad = sparse_grad
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0, sparse=sparse_grad)
        self.pos_emb = nn.Embedding(max_len, d)
        self.emb_ln = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if emb_ln else nn.Identity()
        self.emb_drop = Dropout(cfg.dropout)
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

    def item_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """Input item embeddings ``(B, T, d)`` of ``seq`` (B, T)."""
        return self.item_emb(seq)

    def forward(self, seq: torch.Tensor, need_weights: bool = False):
        """``seq`` (B, T) padded item ids (see ``align``) -> hidden (B, T, d) [, per-layer weights (B, H, T, T)]."""
        B, T = seq.shape
        x = self.item_vectors(seq) * self.scale  # (B, T, d)
        if self.align == "right":
            x = x + self.pos_emb.weight[self.max_len - T:]  # newest item at index max_len - 1
            pad = seq == 0  # (B, T) left padding; causal alone would let queries see it
            pad = pad if bool(pad.any()) else None
        else:
            x = x + self.pos_emb.weight[:T]  # right padding + causal mask: padding is never a key
            pad = None
        x = self.emb_drop(self.emb_ln(x))
        weights = []
        for block in self.blocks:
            x, w = block(x, causal=True, key_padding_mask=pad, need_weights=need_weights)  # (B, T, d)
            weights.append(w)
        x = self.ln_f(x)
        return (x, weights) if need_weights else x


class _FusedLinearCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``h @ W.T`` computed chunk by chunk.

    Forward computes the loss *and* both gradients per chunk of rows (the
    softmax of a chunk stays in cache and the full logit matrix is never
    stored); backward only scales them. ``W`` row 0 is padding and excluded.
    """

    @staticmethod
    def forward(ctx, h, W, targets, chunk: int, dtype: torch.dtype):  # type: ignore[override]
        with torch.autocast("cpu", enabled=False):
            N = h.shape[0]
            Wi = W[1:].detach().to(dtype)  # (V, d)
            hd = h.detach().to(dtype)  # (N, d)
            tgt = (targets - 1)[:, None]  # (N, 1)
            gh = torch.empty(h.shape, dtype=torch.float32)
            gW = torch.zeros(Wi.shape, dtype=torch.float32)
            loss = torch.zeros((), dtype=torch.float64)
            for s in range(0, N, chunk):
                hc = hd[s : s + chunk]  # (n, d)
                tc = tgt[s : s + chunk]
                p = (hc @ Wi.T).float()  # (n, V) logits
                m = p.amax(dim=1, keepdim=True)
                p.sub_(m).exp_()
                z = p.sum(dim=1, keepdim=True)
                pt = p.gather(1, tc)  # exp(logit_target - m)
                loss += float((z.log() - pt.clamp_min(1e-30).log()).sum())
                p.div_(z)  # softmax
                p.scatter_add_(1, tc, torch.full_like(pt, -1.0))  # d loss / d logits
                g = p.to(dtype)
                gh[s : s + chunk] = (g @ Wi).float()  # (n, d)
                if dtype == torch.float32:
                    gW.addmm_(g.T, hc)  # (V, d)
                else:
                    gW.add_((g.T @ hc).float())
            inv = 1.0 / max(1, N)
            gh.mul_(inv)
            gW.mul_(inv)
            ctx.save_for_backward(gh, gW)
            ctx.w_shape = W.shape
            ctx.h_dtype, ctx.w_dtype = h.dtype, W.dtype
            return (loss * inv).to(torch.float32)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        gh, gW = ctx.saved_tensors
        gWfull = torch.zeros(ctx.w_shape, dtype=torch.float32)
        gWfull[1:] = gW
        return (gh * grad_out).to(ctx.h_dtype), (gWfull * grad_out).to(ctx.w_dtype), None, None, None


def fused_linear_cross_entropy(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor,
                               chunk: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean cross-entropy of the logits ``h @ W[1:].T`` against ``targets`` (ids 1..V)."""
    return _FusedLinearCE.apply(h, W, targets, chunk, dtype)


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
    return _pad(histories, max_len, left=False)


def pad_left(histories: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Last ``max_len`` items of each history, left-padded (newest item in the last column)."""
    return _pad(histories, max_len, left=True)


def _pad(histories: Sequence[np.ndarray], max_len: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lens = np.array([min(len(h), max_len) for h in histories], dtype=np.int64)
    T = max(1, int(lens.max()) if len(lens) else 1)
    seq = np.zeros((len(histories), T), dtype=np.int64)
    for i, h in enumerate(histories):
        if lens[i]:
            row = np.asarray(h[-lens[i]:], dtype=np.int64)
            if left:
                seq[i, T - lens[i]:] = row
            else:
                seq[i, : lens[i]] = row
    return torch.from_numpy(seq), torch.from_numpy(lens)


def training_prefixes(data: SequenceData, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ends, lengths)`` into ``data.items``: one sample per target ``items[e]``, input ``items[e-n:e]``.

    Every target of every sequence (all but each sequence's first item) is one
    sample; its input is the at most ``max_len`` items before it.
    """
    starts = np.repeat(data.indptr[:-1], np.diff(data.indptr))  # sequence start of every item
    ends = np.arange(len(data.items), dtype=np.int64)
    keep = ends > starts
    ends = ends[keep]
    return ends, np.minimum(ends - starts[keep], max_len).astype(np.int64)


def batch_order(lens: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of sample indices, similar lengths together (little padding), in random order.

    Shuffle, sort by length inside groups of 64 batches, cut into batches, shuffle the batches.
    """
    perm = rng.permutation(len(lens))
    group = batch_size * 64
    order = []
    for g in range(0, len(perm), group):
        idx = perm[g : g + group]
        order.append(idx[np.argsort(lens[idx], kind="stable")])
    order = np.concatenate(order) if order else perm
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [chunks[j] for j in rng.permutation(len(chunks))]


def gather_padded(items: np.ndarray, first: np.ndarray, n: np.ndarray, left: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``items[first[i] : first[i] + n[i]]`` padded to ``(B, max n)`` -> ``(index (B, T), real (B, T))``.

    ``index`` holds positions into ``items`` (0 where padding), ``real`` marks
    the real cells; ``left=True`` puts the padding on the left.
    """
    T = int(n.max())
    ar = np.arange(T)[None, :]
    off = ar - (T - n[:, None]) if left else np.broadcast_to(ar, (len(n), T))
    real = (off >= 0) & (off < n[:, None])  # (B, T)
    return np.where(real, first[:, None] + off, 0), real


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
    (``epochs``, ``lr``, ... ``num_threads``) are passed to
    :func:`attnrec.training.train`. With ``fit(data, valid)`` training stops
    early on validation ``NDCG@10`` and keeps the best epoch (``best_epoch_``);
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
        training: str = "positions",
        align: str = "left",
        emb_ln: bool = False,
        scale_emb: bool = True,
        loss: str = "ce",
        n_negatives: int = 256,
        negative_sampling: str = "uniform",
        gbce_t: float = 0.75,
        epochs: int | str = 200,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 10,
        eval_every: int = 1,
        seed: int = 0,
        bf16: bool | str = False,
        compile: bool = False,
        num_threads: int | None = None,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        progress: bool = False,
        max_seconds: float | None = None,
        ce_chunk: int = 256,
        sparse_grad: bool | str = "auto",
        lr_decay_patience: int | None = None,
        lr_decay_epochs: tuple[int, ...] | list[int] = (),
        lr_schedule: str = "constant",
        lr_schedule_epochs: int | None = None,
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
        self.training = training
        self.align = align
        self.emb_ln = emb_ln
        self.scale_emb = scale_emb
        self.loss = loss
        self.n_negatives = n_negatives
        self.negative_sampling = negative_sampling
        self.gbce_t = gbce_t
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.eval_every = eval_every
        self.seed = seed
        self.bf16 = bf16
        self.compile = compile
        self.num_threads = num_threads
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.progress = progress
        self.max_seconds = max_seconds
        self.ce_chunk = ce_chunk
        self.lr_decay_patience = lr_decay_patience
        self.lr_decay_epochs = lr_decay_epochs
        self.lr_schedule = lr_schedule
        self.lr_schedule_epochs = lr_schedule_epochs
        self.sparse_grad = sparse_grad

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
        if self.align not in ALIGNS:
            raise ValueError(f"align must be one of {ALIGNS}, got {self.align!r}")
        return SASRecNet(n_items, self.max_len, self._attention_config(), self.n_layers,
                         self.shared_embeddings, self.mixer, self.alpha,
                         sparse_grad=self._sparse_grad_value(n_items), align=self.align,
                         emb_ln=self.emb_ln, scale_emb=self.scale_emb)

    #: optimiser steps that ``epochs="auto"`` budgets for, and the range of epochs it may give
    AUTO_STEPS: ClassVar[int] = 3500
    AUTO_EPOCHS: ClassVar[tuple[int, int]] = (10, 200)

    def _epochs_value(self) -> int:
        if self.epochs != "auto":
            return int(self.epochs)
        return int(self.epochs_)

    def _auto_epochs(self, n_samples: int) -> int:
        """``epochs="auto"``: enough epochs for :attr:`AUTO_STEPS` optimiser steps (a data-size rule).

        The learning-rate schedule runs over this budget, so a small dataset (few
        steps per epoch) gets more epochs and a large one fewer.
        """
        if self.epochs != "auto":
            return int(self.epochs)
        steps = max(1, math.ceil(n_samples / self.batch_size))
        lo, hi = self.AUTO_EPOCHS
        return int(min(hi, max(lo, math.ceil(self.AUTO_STEPS / steps))))

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
    def _fit(self, data: SequenceData, valid: EvalSet | None) -> None:
        torch.manual_seed(self.seed)
        # "auto" dropout: the SASRec paper's values, 0.5 on sparse data with short
        # sequences (Amazon categories), 0.2 on dense data with long ones (MovieLens)
        mean_len = float(data.lengths.mean()) if data.n_users else 0.0
        self.dropout_ = (0.5 if mean_len < 20 else 0.2) if self.dropout == "auto" else float(self.dropout)
        self.net_ = self._build(data.n_items)
        if self.training not in TRAININGS:
            raise ValueError(f"training must be one of {TRAININGS}, got {self.training!r}")
        prefixes = self.training == "prefixes"
        left = self.align == "right"  # right-aligned positions = left padding
        if prefixes:  # one sample per target: (end, n) -> input items[end-n:end], target items[end]
            ends, lens = training_prefixes(data, self.max_len)
            firsts = ends - lens
        else:  # one sample per window: inputs items[s:s+n], targets items[s+1:s+n+1]
            firsts, lens = training_windows(data, self.max_len)
        if len(firsts) == 0:
            raise ValueError("no training targets: every sequence has fewer than 2 items")
        self.epochs_ = self._auto_epochs(len(firsts))
        counts = data.item_counts().astype(np.float64)
        self._neg_probs = None
        if self.negative_sampling == "popularity":
            p = counts[1:] / counts[1:].sum()
            self._neg_probs = torch.from_numpy(p)
        elif self.negative_sampling != "uniform":
            raise ValueError("negative_sampling must be 'uniform' or 'popularity'")
        items = data.items

        def batches(epoch: int, rng: np.random.Generator):
            for sel in batch_order(lens, self.batch_size, rng):
                n = lens[sel]
                idx, real = gather_padded(items, firsts[sel], n, left)
                seq = torch.from_numpy(np.where(real, items[idx], 0))  # (B, T)
                if prefixes:  # the target follows the last input
                    last = real.shape[1] - 1 if left else n - 1
                    yield seq, torch.from_numpy(items[firsts[sel] + n]), torch.from_numpy(np.asarray(last))
                else:  # every position predicts the next item
                    tgt = torch.from_numpy(np.where(real, items[np.where(real, idx + 1, 0)], 0))
                    yield seq, tgt, torch.from_numpy(real)

        def loss_fn(module, batch) -> torch.Tensor:
            seq, tgt, where = batch
            h = module(seq)  # (B, T, d); ``module`` is the DDP wrapper of ``net`` when distributed
            if prefixes:  # the hidden state after each sample's newest item
                return self._loss(h[torch.arange(len(seq)), where], tgt)  # (B, d), (B,)
            return self._loss(h[where], tgt[where])  # (N, d), (N,)

        self._train(batches, loss_fn, valid)
        self.n_train_targets_ = int(lens.sum()) if not prefixes else int(len(lens))

    def _loss(self, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Loss for hidden states ``h`` (N, d) and target ids ``tgt`` (N,)."""
        W = self.net_.output_weight()  # (V + 1, d)
        V = W.shape[0] - 1
        if self.loss == "ce":
            dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else torch.float32
            return fused_linear_cross_entropy(h.float(), W, tgt, self.ce_chunk, dtype)
        rows = self.net_.output_rows  # gathers, so that sparse gradients stay sparse
        pos = (h * rows(tgt)).sum(-1)  # (N,)
        N = h.shape[0]
        if self.loss == "bce":
            neg_ids = torch.randint(1, V + 1, (N,))
            neg = (h * rows(neg_ids)).sum(-1)
            return -(F.logsigmoid(pos) + F.logsigmoid(-neg)).mean()
        k = self.n_negatives
        if self.loss == "gbce":
            neg_ids = torch.randint(1, V + 1, (N, k))
            neg = torch.einsum("nd,nkd->nk", h, rows(neg_ids))  # (N, k)
            a = k / max(1, V - 1)
            beta = a * (self.gbce_t * (1 - 1 / a) + 1 / a)
            return -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(-1)).mean() / (1 + k)
        # sampled softmax with logQ correction, negatives shared by the batch
        if self._neg_probs is None:
            neg_ids = torch.randint(1, V + 1, (k,))
            logq_neg = torch.full((k,), math.log(k / V))
            logq_pos = torch.full((N,), math.log(k / V))
        else:
            neg_ids = torch.multinomial(self._neg_probs, k, replacement=True) + 1
            lp = torch.log(self._neg_probs.float().clamp_min(1e-12) * k)
            logq_neg, logq_pos = lp[neg_ids - 1], lp[tgt - 1]
        neg = h @ rows(neg_ids).T  # (N, k)
        neg = neg - logq_neg[None, :]
        neg = neg.masked_fill(neg_ids[None, :] == tgt[:, None], float("-inf"))  # accidental hits
        logits = torch.cat([(pos - logq_pos)[:, None], neg], dim=1).float()  # (N, 1 + k)
        return F.cross_entropy(logits, torch.zeros(N, dtype=torch.long))

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """Final hidden state of each history's last ``max_len`` items: ``(B, d)``."""
        self._check_fitted()
        self.net_.eval()
        if self.align == "right":
            seq, _ = pad_left(histories, self.max_len)
            return self.net_(seq)[:, -1]  # (B, d)
        seq, lens = pad_right(histories, self.max_len)
        h = self.net_(seq)  # (B, T, d)
        return h[torch.arange(len(lens)), (lens - 1).clamp(min=0)]  # (B, d)

    @torch.no_grad()
    def attention_weights(self, histories: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-layer attention weights over each history's last ``max_len`` items.

        Returns ``(weights, lengths)``: ``weights[l]`` is ``(B, H, T, T)`` for layer
        ``l`` (query position x key position, right-padded: history ``b``
        occupies positions ``0 .. lengths[b]-1``, oldest first, whatever ``align``
        the network uses); rows of real positions sum to 1 over their (causal) keys.
        """
        self._check_fitted()
        self.net_.eval()
        hs = [np.asarray(h, dtype=np.int64) for h in histories]
        if self.align != "right":
            seq, lens = pad_right(hs, self.max_len)
            _, weights = self.net_(seq, need_weights=True)
            return [w.float() for w in weights], lens
        seq, lens = pad_left(hs, self.max_len)
        _, weights = self.net_(seq, need_weights=True)
        T = seq.shape[1]
        out = []
        for w in weights:  # move each history's block from the bottom-right corner to the top-left
            r = torch.zeros_like(w, dtype=torch.float32)
            for b, n in enumerate(lens.tolist()):
                r[b, :, :n, :n] = w[b, :, T - n:, T - n:].float()
            out.append(r)
        return out, lens

    # ---- persistence -----------------------------------------------------
    def _extra_config(self) -> dict[str, Any]:
        return {**super()._extra_config(), "dropout": getattr(self, "dropout_", None),
                "epochs": getattr(self, "epochs_", None)}

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        super()._load_extra_config(extra)
        if extra.get("epochs") is not None:
            self.epochs_ = int(extra["epochs"])
        if extra.get("dropout") is not None:
            self.dropout_ = float(extra["dropout"])
