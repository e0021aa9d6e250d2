"""User-level differentially private training (DP-SGD on Opacus) for the attention models.

What is protected is a *user*: each user contributes exactly one training row
(their most recent window of items), so clipping a row's gradient bounds what
one user's whole sequence can do to the weights. Per step, rows are drawn by
Poisson sampling (each user independently with probability ``q``, Opacus's
:class:`~opacus.utils.uniform_sampler.UniformWithReplacementSampler`); each
row's gradient is clipped to ``max_grad_norm``, the clipped sum gets Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` and is divided
by the expected batch size (Opacus's :class:`~opacus.optimizers.DPOptimizer`,
wrapping the usual AdamW: Adam on privatised gradients is post-processing).
The noise multiplier is calibrated by the Opacus accountant (``"rdp"``, Rényi
DP, by default; ``"prv"``, privacy random variables, is tighter) so that the
*planned* number of steps (``epochs * ceil(1/q)``) reaches exactly the target
``epsilon`` at ``delta``; the trainer refuses to take a step beyond the plan,
so a run can end below its budget (time limit) but never above it.

Model selection under DP: the run trains for its planned epochs with no
validation-driven early stopping or best-epoch restore. Validation targets are
the users' own items; choosing an epoch by them is a data-dependent release
that DP-SGD's accounting does not cover. Fixed epochs keep the accounting exact
(the protocol is called ``fixed-epochs``).

Per-row gradients: Opacus's hook-based ``GradSampleModule`` sees only what
passes through the forward of a supported layer. In these models the item
embedding is also the output layer (tied, used as a raw tensor in the loss),
SASRec adds position embeddings by slicing the weight, the low-pass mixer and
the attention temperature are raw parameters, and the default loss is a fused
custom autograd kernel that returns the *batch* gradient of the output
weight. So per-row gradients are taken over the whole per-row loss with
``torch.func`` (``vmap(grad(...))``, the functorch path Opacus itself uses for
layers it has no hook for), a micro-batch of rows at a time, and handed to
Opacus's ``DPOptimizer`` as ``p.grad_sample``: clipping, accumulation over
micro-batches (``signal_skip_step``, as in Opacus's ``BatchMemoryManager``),
noise and accounting are Opacus's. The fused kernel cannot be vmapped, so under
DP the models compute plain logits and cross-entropy per micro-batch (memory:
``microbatch * T * n_items`` logits plus ``microbatch * n_params`` per-row
gradients, independent of the expected batch size).

Noise comes from a ``torch.Generator`` seeded from the run's seed, so a run is
reproducible; for a production release pass ``secure_mode`` to Opacus instead
(cryptographically secure noise, not reproducible).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

ACCOUNTANTS = ("rdp", "prv")
PROTOCOL = "fixed-epochs"  # no validation peeking under DP (see the module docstring)


class PrivacyBudgetExhausted(RuntimeError):
    """Raised by :meth:`DPSGD.step` when one more step would exceed the planned budget."""


@dataclass
class PrivacyConfig:
    """DP-SGD settings for one training run (``n_rows`` = users with a training row)."""

    epsilon: float
    delta: float
    n_rows: int
    expected_batch_size: int
    epochs: int
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    microbatch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, (int, float)) and self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"privacy_epsilon must be a positive finite number, got {self.epsilon!r}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"privacy_delta must be in (0, 1), got {self.delta!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy_accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"privacy_clip must be > 0, got {self.max_grad_norm!r}")
        if self.n_rows < 1:
            raise ValueError("differential privacy needs at least one user with a training row")
        if self.expected_batch_size < 1 or self.microbatch < 1 or self.epochs < 1:
            raise ValueError("batch_size, privacy_microbatch and epochs must be >= 1")

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.expected_batch_size / self.n_rows)

    @property
    def steps_per_epoch(self) -> int:
        return int(1 / self.sample_rate)  # Opacus's UniformWithReplacementSampler length

    @property
    def planned_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class DPSGD:
    """The training-loop hook: Poisson batches, per-row clipped and noised steps, the accountant.

    Used by :func:`attnrec.training.train` when it is given ``privacy=``:
    :meth:`attach` wraps the optimiser, :meth:`step` replaces
    forward/backward/step for one Poisson batch. ``loss_fn(module, batch)``
    must return one loss per row ``(B,)``; a batch is a list of micro-batches,
    each a tuple of tensors whose first dimension is the row
    (:meth:`sample_rows` and :func:`microbatches` build them).
    """

    def __init__(self, config: PrivacyConfig):
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier

        self.config = config
        self.noise_multiplier = float(get_noise_multiplier(
            target_epsilon=config.epsilon, target_delta=config.delta, sample_rate=config.sample_rate,
            steps=config.planned_steps, accountant=config.accountant))
        self.accountant = create_accountant(config.accountant)
        self.steps = 0
        self._optimizer = None
        self._wrapper: _PerRowLoss | None = None
        self._noise = torch.Generator().manual_seed(int(config.seed) * 7919 + 17)
        log.info("DP-SGD: epsilon %.3g delta %.3g (%s), q=%.4g, %d steps, clip %.3g -> noise multiplier %.4f",
                 config.epsilon, config.delta, config.accountant, config.sample_rate,
                 config.planned_steps, config.max_grad_norm, self.noise_multiplier)

    # ---- sampling --------------------------------------------------------
    def sample_rows(self, rng: np.random.Generator) -> Iterator[np.ndarray]:
        """One epoch of Poisson batches: arrays of row indices (possibly empty)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        sampler = UniformWithReplacementSampler(
            num_samples=self.config.n_rows, sample_rate=self.config.sample_rate, generator=gen)
        for idx in sampler:
            yield np.asarray(idx, dtype=np.int64)

    # ---- optimisation ----------------------------------------------------
    def attach(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap ``optimizer`` in Opacus's ``DPOptimizer`` with the accountant's step hook."""
        from opacus.optimizers import DPOptimizer

        dp = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier,
                         max_grad_norm=self.config.max_grad_norm,
                         expected_batch_size=self.config.expected_batch_size,
                         loss_reduction="mean", generator=self._noise)
        dp.attach_step_hook(self.accountant.get_optimizer_hook_fn(
            sample_rate=self.config.sample_rate))
        self._optimizer = dp
        return dp

    @property
    def exhausted(self) -> bool:
        """True once the planned steps are spent: one more would exceed the target epsilon."""
        return self.steps >= self.config.planned_steps

    def step(self, module: nn.Module, batch: Sequence[tuple[torch.Tensor, ...]],
             loss_fn: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]) -> float:
        """One DP-SGD step on a Poisson batch (a list of micro-batches); returns the mean row loss."""
        if self._optimizer is None:
            raise RuntimeError("DPSGD.attach(optimizer) must be called before step()")
        if self.exhausted:
            raise PrivacyBudgetExhausted(f"the planned {self.config.planned_steps} steps are spent")
        if self._wrapper is None or self._wrapper.net is not module:
            self._wrapper = _PerRowLoss(module, loss_fn)
        opt, wrapper = self._optimizer, self._wrapper
        params = {k: p for k, p in wrapper.named_parameters() if p.requires_grad}
        opt.zero_grad(set_to_none=True)
        micro = [m for m in batch if len(m[0])] or [None]  # an empty Poisson batch still adds noise
        total, rows = 0.0, 0
        for i, mb in enumerate(micro):
            if mb is None:
                for p in params.values():
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
            else:
                grads, losses = _per_row_grads(wrapper, params, mb)
                for k, p in params.items():
                    p.grad_sample = grads[k]
                total += float(losses.sum())
                rows += len(losses)
            if i < len(micro) - 1:  # accumulate clipped gradients; noise once per Poisson batch
                opt.signal_skip_step(do_skip=True)
            opt.step()
            if i < len(micro) - 1:
                opt.zero_grad(set_to_none=True)  # keeps p.summed_grad after a skipped step
        self.steps += 1
        return total / max(1, rows)

    # ---- reporting -------------------------------------------------------
    def epsilon_spent(self) -> float:
        """Epsilon at ``delta`` for the steps taken so far (0 before the first)."""
        if not self.steps:
            return 0.0
        return float(self.accountant.get_epsilon(delta=self.config.delta))

    def report(self) -> dict[str, Any]:
        """The privacy guarantee of the run, as stored in the bundle's model card."""
        c = self.config
        return {
            "unit": "user", "mechanism": "DP-SGD (Opacus), Poisson sampling",
            "epsilon_target": float(c.epsilon), "epsilon": self.epsilon_spent(), "delta": float(c.delta),
            "accountant": c.accountant, "sample_rate": float(c.sample_rate),
            "expected_batch_size": int(c.expected_batch_size), "max_grad_norm": float(c.max_grad_norm),
            "noise_multiplier": self.noise_multiplier, "steps": int(self.steps),
            "planned_steps": int(c.planned_steps), "epochs_planned": int(c.epochs),
            "n_rows": int(c.n_rows), "selection": PROTOCOL,
        }


class _PerRowLoss(nn.Module):
    """``forward(*batch) = loss_fn(net, batch)``: lets ``torch.func.functional_call`` swap every
    parameter the loss touches, including a tied output weight read outside ``net.forward``."""

    def __init__(self, net: nn.Module, loss_fn: Callable[[nn.Module, tuple], torch.Tensor]):
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.net, batch)


def _per_row_grads(wrapper: _PerRowLoss, params: dict[str, torch.Tensor],
                   batch: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-row gradients ``{name: (B, *shape)}`` and losses ``(B,)`` of one micro-batch."""
    from torch.func import functional_call, grad_and_value, vmap

    detached = {k: p.detach() for k, p in params.items()}
    buffers = dict(wrapper.named_buffers())

    def row_loss(p, *row):
        out = functional_call(wrapper, (p, buffers), tuple(t.unsqueeze(0) for t in row))  # (1,)
        return out.sum()

    # randomness="different": every row draws its own dropout masks
    grads, losses = vmap(grad_and_value(row_loss), in_dims=(None,) + (0,) * len(batch),
                         randomness="different")(detached, *batch)
    return grads, losses.detach()


def microbatches(rows: np.ndarray, lengths: np.ndarray, size: int) -> list[np.ndarray]:
    """Split a Poisson batch of ``rows`` into groups of at most ``size``, sorted by length
    (little padding per micro-batch)."""
    if not len(rows):
        return []
    order = rows[np.argsort(lengths[rows], kind="stable")]
    return [order[i : i + size] for i in range(0, len(order), size)]


def default_delta(n_users: int) -> float:
    """``1 / n_users`` (the issue's default); smaller values are the safer choice."""
    return 1.0 / max(2, int(n_users))


def per_row_cross_entropy(h: torch.Tensor, W: torch.Tensor, targets: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """Full-softmax cross-entropy over items 1..V of ``h @ W.T``, averaged over each row's ``mask``: ``(B,)``.

    ``h`` (B, T, d), ``W`` (V + 1, d) with row 0 padding, ``targets`` (B, T) ids 1..V.
    The DP fallback of the fused kernel (which cannot be vmapped): the ``(B, T, V + 1)``
    logits of one micro-batch exist at once.
    """
    # all V + 1 rows with the padding column masked, not ``W[1:]``: under vmap the slice's backward
    # costs a zero-filled (B, V + 1, d) copy per micro-batch (measured 1.8x slower at 12,000 items)
    logits = (h @ W.T).masked_fill(torch.arange(W.shape[0]) == 0, float("-inf"))  # (B, T, V + 1)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.clamp(min=1).flatten(),
                                     reduction="none").view(targets.shape)  # (B, T)
    m = mask.to(ce.dtype)
    return (ce * m).sum(1) / m.sum(1).clamp(min=1.0)


def is_private(epsilon: float | str | None) -> bool:
    """``privacy_epsilon`` None or infinity (``inf``) means non-private training."""
    if epsilon is None:
        return False
    try:
        value = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"privacy_epsilon must be a positive number or inf, got {epsilon!r}") from None
    return not math.isinf(value)
