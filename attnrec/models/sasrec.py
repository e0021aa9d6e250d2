"""SASRec: causal self-attention over the item sequence (Kang & McAuley, ICDM 2018).

This file is the estimator; the network is :mod:`attnrec.models.sasrec_net`,
the windows and batches :mod:`attnrec.models.batching`, the losses
:mod:`attnrec.models.losses`. Defaults
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
* Batches hold about ``batch_targets`` targets each (not a fixed number of
  windows): the loss is the mean over a batch's targets, so with a fixed window
  count a batch of one-item windows gave each of its targets ~50x the weight of
  a target in a batch of 50-item windows. Weighting every target the same
  raised Amazon Beauty's validation NDCG@10 from 0.0662 to 0.0731
  (``benchmarks/RESULTS.md``). ``batch_targets=None`` batches ``batch_size``
  windows, as before.
* Output logits are computed only at real (non-padding) positions.

Losses (``loss=``, :mod:`attnrec.models.losses`):

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
BSARec-style causal low-pass branch beside self-attention in every block
(:class:`~attnrec.models.sasrec_net.CausalLowPass`). It is the default because
validation said so on Amazon Beauty: validation NDCG@10 0.0650 with ``alpha=0.7`` against 0.0621 without the branch, best of
the first 16 epochs of each run (``benchmarks/RESULTS.md``); ``alpha=0.7`` is
BSARec's published value for Beauty, not tuned here.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import math
from dataclasses import dataclass

import numpy as np
import torch

from attnrec import privacy as dp
from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.models import losses
from attnrec.models.attention import AttentionConfig
from attnrec.models.base import register
from attnrec.models.batching import (length_grouped_batches, pad_left, pad_right, target_budget_batches,
                                     training_prefixes, training_windows, window_ids)
from attnrec.models.neural import NeuralSequenceModel
from attnrec.models.sasrec_net import SASRecConfig, SASRecNet
from attnrec.training import ValidationMetric

LOSSES = ("ce", "sampled_softmax", "bce", "gbce")
TRAININGS = ("positions", "prefixes")


def next_item_batch(data: SequenceData, starts: np.ndarray, lens: np.ndarray, left: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows -> ``(inputs, next items, mask)``, each ``(B, T)``, ``T = lens.max()``; right-padded
    (left-padded if ``left``: a right-aligned network's layout)."""
    seq, mask = window_ids(data.items, starts, lens, left)  # (B, T) inputs
    tgt, _ = window_ids(data.items, starts + 1, lens, left)  # (B, T) next items
    return torch.from_numpy(seq), torch.from_numpy(tgt), torch.from_numpy(mask)


@register("sasrec")
class SASRec(NeuralSequenceModel):
    """SASRec with a choice of training objective (default: full softmax CE).

    Hyperparameters are stored as given (scikit-learn style). ``dropout="auto"``
    resolves at fit time (``dropout_``) to 0.3 when the mean training sequence
    is shorter than 20 items (sparse data such as Amazon categories) and to 0.2
    otherwise (dense data such as MovieLens): the SASRec paper's rule, with 0.3
    instead of its 0.5 because Beauty validation chose it under these defaults. Training options
    (``epochs``, ``batch_size``, ``lr``, ...: the fields of :attr:`TrainConfig`)
    are keyword arguments too. With ``fit(data, valid, metric)`` training stops
    early on the validation metric and keeps the best epoch (``best_epoch_``);
    the recommended final protocol refits on train+valid for that many epochs
    (:meth:`refit_params`).

    Defaults chosen on Amazon Beauty validation (``benchmarks/RESULTS.md``,
    issue 12 ablations): ``batch_targets=1500`` (every target weighs the same),
    ``align="right"`` (the newest item always at the last position index, as in
    BSARec's pipeline), ``d_model=128``, AdamW at lr 2e-3 with weight decay 0.1 and an average of
    the weights (``ema_decay="auto"``: over about two epochs of steps; validation and
    the returned model use it), and label smoothing 0.3 of the full-softmax target
    (``label_smoothing="auto"``: :attr:`AUTO_LABEL_SMOOTHING`, off for the sampled losses and
    under DP).
    """

    #: bundles written before ``align``, ``batch_targets``, ``ema_decay`` and ``label_smoothing`` existed
    #: were trained this way (their other settings, the learning rate among them, are in the bundle)
    older_bundle_params: ClassVar[dict[str, Any]] = {"align": "left", "batch_targets": None, "ema_decay": None,
                                                     "label_smoothing": 0.0}

    @dataclass
    class TrainConfig(NeuralSequenceModel.TrainConfig):
        """SASRec's training defaults (the fields are its hyperparameters too)."""

        # bf16 autocast where the CPU has native bf16 matmuls: on Amazon Beauty the
        # validation curve matched float32's to within 0.0002 NDCG@10 at every epoch
        # up to 16 (benchmarks/RESULTS.md)
        bf16: bool | str = "auto"
        # validation every 2 epochs, stop after 3 evaluations without improvement (6 epochs, not
        # 10 evaluations): on Beauty the evaluations after the best epoch brought no improvement
        # that the longer patience would have caught, the gaps between improvements on ml-100k
        # and the shop were at most 3 evaluations of every 2 epochs, and the saved epochs and
        # validation passes are ~2.5 minutes of a Beauty run (benchmarks/RESULTS.md)
        eval_every: int = 2
        patience: int | None = 3
        # weight decay 0.1 and an average of the weights over ~2 epochs ("auto": see
        # _auto_ema_decay; 0.995 a step on Beauty): together +0.0011 Beauty validation NDCG@10
        # (0.0761 -> 0.0772), each alone about half that; ahead on ml-100k and the shop too
        # (benchmarks/RESULTS.md, issue 12 third round)
        weight_decay: float = 0.1
        ema_decay: float | str | None = "auto"
        # learning rate 2e-3 (the shared loop's 1e-3 before): with label smoothing and dropout 0.3 the
        # same Beauty validation peak at both seeds (0.0786 / 0.0790 against 0.0787 / 0.0792) reached at
        # epoch 10 instead of 16; ml-100k 0.1430 at epoch 6 against 0.1439 at 10, the shop 0.3505 at 34
        # against 0.3456 at 60 (benchmarks/RESULTS.md, issue 12 fourth round)
        lr: float = 2e-3

    def __init__(
        self,
        d_model: int = 128,
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
        batch_targets: int | None = 1500,
        align: str = "right",
        emb_ln: bool = False,
        scale_emb: bool = True,
        input_item_dropout: float = 0.0,
        positions: str = "absolute",
        loss: str = "ce",
        label_smoothing: float | str = "auto",
        loss_excludes_seen: bool = False,
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
        self.training = training
        self.batch_targets = batch_targets
        self.align = align
        self.emb_ln = emb_ln
        self.scale_emb = scale_emb
        self.input_item_dropout = input_item_dropout
        self.positions = positions
        self.loss = loss
        self.label_smoothing = label_smoothing
        self.loss_excludes_seen = loss_excludes_seen
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

    def _net_config(self, n_items: int) -> SASRecConfig:
        return SASRecConfig(n_items=n_items, max_len=self.max_len, n_layers=self.n_layers,
                            attention=self._attention_config(), shared_embeddings=self.shared_embeddings,
                            mixer=self.mixer, alpha=self.alpha, sparse_grad=self._sparse_grad_value(n_items),
                            align=self.align, emb_ln=self.emb_ln, scale_emb=self.scale_emb,
                            input_item_dropout=float(self.input_item_dropout), positions=self.positions)

    def _build(self, n_items: int) -> SASRecNet:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss_excludes_seen and (self.loss != "ce" or self.private):
            raise ValueError("loss_excludes_seen needs loss='ce' without privacy_epsilon (the full softmax "
                             "is the loss whose denominator it changes)")
        if not 0.0 <= float(self.input_item_dropout) < 1.0:
            raise ValueError(f"input_item_dropout must be in [0, 1), got {self.input_item_dropout!r}")
        self._label_smoothing_value()  # checks it
        return SASRecNet(self._net_config(n_items))

    #: optimiser steps that ``epochs="auto"`` budgets for, and the range of epochs it may give
    AUTO_STEPS: ClassVar[int] = 3500
    AUTO_EPOCHS: ClassVar[tuple[int, int]] = (10, 200)

    #: ``label_smoothing="auto"``: the smoothing of the full-softmax CE (off where it does not apply).
    #: 0.3: the best mean relative validation gain over Beauty, ml-100k and the shop among 0.1-0.4
    #: (+1.3%, +3.0%, +2.9% NDCG@10 over none; benchmarks/RESULTS.md, issue 12 fourth round)
    AUTO_LABEL_SMOOTHING: ClassVar[float] = 0.3

    def _label_smoothing_value(self) -> float:
        """The label smoothing training uses: ``"auto"`` is :attr:`AUTO_LABEL_SMOOTHING` for the full-softmax
        ``ce`` loss and 0 otherwise (sampled losses, ``loss_excludes_seen``, DP training, whose figures
        were measured without); an explicit value needs the plain ``ce`` loss."""
        plain_ce = self.loss == "ce" and not self.loss_excludes_seen and not self.private
        if self.label_smoothing == "auto":
            return self.AUTO_LABEL_SMOOTHING if plain_ce else 0.0
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be 'auto' or a number in [0, 1), got {self.label_smoothing!r}")
        if self.label_smoothing and not plain_ce:
            raise ValueError("label_smoothing needs loss='ce' without loss_excludes_seen or privacy_epsilon "
                             "(it smooths the full softmax's target)")
        return float(self.label_smoothing)

    #: ``ema_decay="auto"``: the weight average spans about this many epochs of optimiser steps
    AUTO_EMA_EPOCHS: ClassVar[float] = 2.0

    def train_config(self):
        cfg = super().train_config()
        cfg.epochs = self._epochs_value()
        cfg.ema_decay = self.ema_decay if self.ema_decay != "auto" else getattr(self, "ema_decay_", None)
        return cfg

    def _auto_ema_decay(self, steps_per_epoch: int) -> float:
        """``ema_decay="auto"``: a per-step decay whose average spans :attr:`AUTO_EMA_EPOCHS` epochs.

        A fixed per-step decay would average over a different share of training on
        every dataset: 0.995 is two epochs of Beauty but most of the run of a small
        log with a few steps an epoch.
        """
        return 1.0 - 1.0 / (self.AUTO_EMA_EPOCHS * max(1, steps_per_epoch))

    def _epochs_value(self) -> int:
        return int(self.epochs_) if self.epochs == "auto" else int(self.epochs)

    def _auto_epochs(self, steps_per_epoch: int) -> int:
        """``epochs="auto"``: enough epochs for :attr:`AUTO_STEPS` optimiser steps (a data-size rule).

        The learning-rate schedule runs over this budget, so a small dataset (few
        steps per epoch) gets more epochs and a large one fewer.
        """
        if self.epochs != "auto":
            return int(self.epochs)
        steps = max(1, steps_per_epoch)
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
    def _fit(self, data: SequenceData, valid: EvalSet | None, metric: ValidationMetric | None) -> None:
        torch.manual_seed(self.seed)
        # "auto" dropout: the SASRec paper's rule, sparse data with short sequences (Amazon
        # categories) 0.3 (the paper's 0.5 lost on Beauty validation, and with label smoothing 0.3
        # beat 0.4 at two seeds: 0.0787 / 0.0792 against 0.0783 / 0.0785), dense data with long
        # ones (MovieLens) 0.2
        mean_len = float(data.lengths.mean()) if data.n_users else 0.0
        self.dropout_ = (0.3 if mean_len < 20 else 0.2) if self.dropout == "auto" else float(self.dropout)
        self.net_ = self._build_for_fit(data)
        self.ema_decay_ = None  # "auto" stays off under DP (its figures were measured without)
        if self.private:
            return self._fit_private(data)
        if self.training not in TRAININGS:
            raise ValueError(f"training must be one of {TRAININGS}, got {self.training!r}")
        prefixes = self.training == "prefixes"
        left = self.align == "right"  # right-aligned positions = left padding
        # prefixes: one sample per target, input items[s:s+n], target items[s+n];
        # positions: one sample per window, inputs items[s:s+n], targets items[s+1:s+n+1]
        starts, lens = (training_prefixes if prefixes else training_windows)(data, self.max_len)
        if len(starts) == 0:
            raise ValueError("no training targets: every sequence has fewer than 2 items")
        if self.batch_targets is not None and (not isinstance(self.batch_targets, int) or self.batch_targets < 1):
            raise ValueError(f"batch_targets must be a positive integer or None, got {self.batch_targets!r}")
        by_targets = self.batch_targets is not None and not prefixes  # a prefix sample is one target
        steps = (math.ceil(int(lens.sum()) / self.batch_targets) if by_targets
                 else math.ceil(len(starts) / self.batch_size))
        self.epochs_ = self._auto_epochs(steps)
        self.ema_decay_ = self._auto_ema_decay(steps)
        counts = data.item_counts().astype(np.float64)
        self._neg_probs = None
        if self.negative_sampling == "popularity":
            p = counts[1:] / counts[1:].sum()
            self._neg_probs = torch.from_numpy(p)
        elif self.negative_sampling != "uniform":
            raise ValueError("negative_sampling must be 'uniform' or 'popularity'")

        def batches(epoch: int, rng: np.random.Generator):
            chosen = (target_budget_batches(lens, self.batch_targets, rng) if by_targets
                      else length_grouped_batches(lens, self.batch_size, rng))
            for sel in chosen:
                seq, real = window_ids(data.items, starts[sel], lens[sel], left)  # (B, T) inputs
                if prefixes:  # the target follows each sample's newest input
                    last = np.full(len(sel), seq.shape[1] - 1) if left else lens[sel] - 1
                    yield (torch.from_numpy(seq), torch.from_numpy(data.items[starts[sel] + lens[sel]]),
                           torch.from_numpy(last))
                else:  # every position predicts the next item
                    tgt, _ = window_ids(data.items, starts[sel] + 1, lens[sel], left)  # (B, T) next items
                    yield torch.from_numpy(seq), torch.from_numpy(tgt), torch.from_numpy(real)

        def loss_fn(module, batch) -> torch.Tensor:
            seq, tgt, where = batch
            h = module(seq)  # (B, T, d); ``module`` is the DDP wrapper of ``net`` when distributed
            if prefixes:  # the hidden state after each sample's newest item
                seen = seq if self.loss_excludes_seen else None  # (B, T)
                return self._loss(h[torch.arange(len(seq)), where], tgt, seen)  # (B, d), (B,)
            seen = None
            if self.loss_excludes_seen:  # position t has seen the inputs 0..t of its window
                T = seq.shape[1]
                upto = torch.ones(T, T, dtype=torch.bool).tril()  # (t, j): j <= t
                seen = seq[:, None, :].masked_fill(~upto, 0)[where]  # (N, T)
            return self._loss(h[where], tgt[where], seen)  # (N, d), (N,)

        self._train_net(batches, loss_fn, valid, metric)
        self.n_train_targets_ = int(len(lens) if prefixes else lens.sum())

    def _fit_private(self, data: SequenceData) -> None:
        """User-level DP-SGD (:mod:`attnrec.privacy`): one row per user, their last
        ``max_len`` targets (older ones are not used), Poisson-sampled, clipped per row."""
        users = np.flatnonzero(data.lengths >= 2)
        if len(users) == 0:
            raise ValueError("no training targets: every sequence has fewer than 2 items")
        lens = np.minimum(data.lengths[users] - 1, self.max_len).astype(np.int64)
        starts = data.indptr[users + 1].astype(np.int64) - 1 - lens
        hook = self._privacy_hook(data.n_users, len(users))
        size = self.privacy_microbatch
        left = self.align == "right"  # right-aligned positions = left padding

        def batches(epoch: int, rng: np.random.Generator):
            for rows in hook.sample_rows(rng):  # one Poisson batch -> its micro-batches
                yield [next_item_batch(data, starts[m], lens[m], left) for m in dp.microbatches(rows, lens, size)]

        def loss_fn(module, batch) -> torch.Tensor:
            seq, tgt, mask = batch
            return dp.per_row_cross_entropy(module(seq), module.output_weight(), tgt, mask)  # (B,)

        self._train_net(batches, loss_fn, None, None, privacy=hook)
        self.n_train_targets_ = int(lens.sum())

    def _loss(self, h: torch.Tensor, tgt: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """Loss for hidden states ``h`` (N, d) and target ids ``tgt`` (N,); ``seen`` (N, L): ids
        each row's softmax leaves out (``loss_excludes_seen``: ranking excludes them anyway)."""
        W = self.net_.output_weight()  # (V + 1, d)
        V = W.shape[0] - 1
        if self.loss == "ce":
            return losses.cross_entropy(h, W, tgt, self.ce_chunk, seen, self._label_smoothing_value())
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
        if self.align == "right":
            seq, _ = pad_left(histories, self.max_len)
            return self.net_(seq)[:, -1]  # (B, d)
        seq, lens = pad_right(histories, self.max_len)
        h = self.net_(seq)  # (B, T, d)
        return h[torch.arange(len(lens)), (lens - 1).clamp(min=0)]  # (B, d)

    @torch.no_grad()
    def _prefix_scores(self, visible: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.align == "right":  # each prefix has its own position indices: one forward per prefix
            return super()._prefix_scores(visible, items)
        # causal: the state at position i is the state of the prefix ending there (one forward)
        self.net_.eval()
        seq, lens = pad_right([visible], self.max_len)
        h = self.net_(seq)[0, : int(lens[0])]  # (n, d)
        return (h @ self.net_.output_weight()[torch.from_numpy(items)].T).double().numpy()

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
            r = torch.zeros(w.shape, dtype=torch.float32)
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
