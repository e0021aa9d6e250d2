"""The one explicit training loop used by every neural model in attnrec.

A model supplies two closures, a :class:`TrainConfig` and optionally a metric:

* ``batches(epoch, rng) -> iterable`` of training batches for one epoch (``rng``
  is a ``numpy.random.Generator`` seeded from ``(seed, epoch)`` so an epoch's
  batch order does not depend on whether training was resumed);
* ``loss_fn(module, batch) -> scalar tensor`` (called with the module in train
  mode, inside ``bf16`` autocast when asked). The forward must go through the
  ``module`` argument: under ``torch.distributed`` it is the
  ``DistributedDataParallel`` wrapper, whose forward arms the gradient all-reduce;
* ``evaluate() -> float`` (optional): the validation metric, higher is better,
  recorded in the history under ``metric`` (the caller of a model's ``fit``
  hands it a :class:`ValidationMetric`, e.g.
  :func:`attnrec.evaluation.validation_metric`: NDCG@10 by full ranking).

:class:`TrainConfig` is the one declaration of the training options: every
field is also a hyperparameter of each model trained here
(:class:`attnrec.models.neural.TrainedModel`; ``-p lr=...`` on the command line),
and a model overrides defaults with a dataclass subclass.

:func:`train` runs AdamW (and ``SparseAdam`` for the weights of any
``nn.Embedding(sparse=True)``: their gradients touch only the rows of a batch,
so a million-item table costs per step what the batch touches, not the
catalogue; such gradients are all-reduced sparsely under DDP), evaluates every
``eval_every`` epochs, stops early after ``patience`` evaluations without
improvement (optionally halving the learning rate after every
``lr_decay_patience`` of them), restores the best weights (with ``ema_decay``:
validation, the kept weights and the returned model are an exponential moving
average of the weights, updated after every step),
checkpoints to ``checkpoint_dir`` after every epoch and continues from there
with ``resume=True``. Randomness is seeded per epoch (python, numpy, torch), so
a resumed run reproduces an uninterrupted one. ``history`` holds one dict per
epoch: ``{"epoch", "loss", "<metric>" (when evaluated), "seconds"}``.

Distributed (a process group is initialised, e.g. by ``torchrun`` via
:func:`attnrec.distributed.init_from_env`): every rank runs the same seeded
``batches`` and takes every ``world``-th batch (:func:`attnrec.distributed.shard`),
so one step averages the gradients of ``world`` batches; only rank 0 evaluates
(the metric and the stop decision are broadcast, so all ranks stop together)
and writes checkpoints; on resume rank 0 reads the checkpoint and broadcasts it,
so the other nodes need not share its file system.

Differential privacy: with ``privacy=`` (an :class:`attnrec.privacy.DPSGD`) each batch
is a Poisson batch of users and the step is the hook's (per-user clipping, noise,
accountant; ``loss_fn`` then returns one loss per user); training stops when the
planned privacy budget is spent, and ``TrainResult.privacy`` reports it.

Library code only logs (logger ``attnrec.training``); the tqdm bar is off
unless ``progress=True``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch

from attnrec import distributed as dist_utils

if TYPE_CHECKING:
    from attnrec.privacy import DPSGD

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Training options (each field is also a hyperparameter of the models trained here)."""

    epochs: int | str = 200  # a model may resolve "auto" from its data before training
    batch_size: int = 128  # training examples per step (the model's ``batches`` read it)
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float | None = 5.0
    patience: int | None = 10  # evaluations without improvement before stopping (None = never stop)
    eval_every: int = 1
    seed: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False
    bf16: bool | str = False  # bf16 autocast; "auto" = when the CPU has native bf16 matmuls
    # torch.compile of the loss closure. Off by default: on this CPU machine 2 epochs of the tiny
    # test SASRec took 185 s with it (compilation + recompiles for varying batch shapes) vs ~1 s without.
    compile: bool = False
    num_threads: int | None = None
    progress: bool = False
    max_seconds: float | None = None  # wall-clock budget; stops after the epoch that exceeds it
    # learning-rate decay: multiply the rate by lr_decay_factor after every lr_decay_patience
    # evaluations without improvement, and after each epoch listed in lr_decay_epochs (the
    # refit on train+valid replays the selection run's decays this way: it has no validation)
    lr_decay_patience: int | None = None
    lr_decay_factor: float = 0.5
    lr_decay_epochs: tuple[int, ...] = ()
    # per-epoch schedule of the rate over a fixed horizon (lr_schedule_epochs, default epochs):
    # "constant", "cosine" (lr * (1 + cos(pi * (epoch - 1) / horizon)) / 2) or "linear" (to 0);
    # a refit that stops early keeps the selection run's horizon, so its epochs get the same rates
    lr_schedule: str = "constant"
    lr_schedule_epochs: int | None = None
    # exponential moving average of the weights after every step (torch's AveragedModel; None = off):
    # validation, the kept best weights and the returned model are the average's
    ema_decay: float | None = None
    # user-level differential privacy (attnrec.privacy; None or inf = off): target epsilon, delta
    # (None = 1 / n_users), per-user clipping norm, Opacus accountant, users per per-sample-gradient
    # micro-batch (bounds memory). Only models that pass a DPSGD hook to train() support it.
    privacy_epsilon: float | None = None
    privacy_delta: float | None = None
    privacy_clip: float = 1.0
    privacy_accountant: str = "rdp"
    privacy_microbatch: int = 32


LR_SCHEDULES = ("constant", "cosine", "linear")


def lr_at(cfg: TrainConfig, epoch: int, n_decays: int = 0) -> float:
    """The learning rate of (1-based) ``epoch`` after ``n_decays`` plateau/listed decays."""
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {cfg.lr_schedule!r}")
    horizon = max(1, int(cfg.lr_schedule_epochs or cfg.epochs))
    frac = min(1.0, (epoch - 1) / horizon)
    mult = {"constant": 1.0, "cosine": 0.5 * (1.0 + math.cos(math.pi * frac)), "linear": 1.0 - frac}
    return cfg.lr * mult[cfg.lr_schedule] * cfg.lr_decay_factor ** n_decays


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmuls (AVX512-BF16 or AMX; read from /proc/cpuinfo).

    Without them bf16 autocast is emulated and slower than float32, so ``bf16="auto"``
    stays off.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_bf16(value: bool | str) -> bool:
    """``True``/``False`` as given; ``"auto"`` = :func:`cpu_has_fast_bf16`."""
    if value == "auto":
        return cpu_has_fast_bf16()
    if value not in (True, False):
        raise ValueError(f"bf16 must be true, false or 'auto', got {value!r}")
    return bool(value)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # 1-based epoch whose weights were kept (0 = none evaluated)
    best_metric: float = float("-inf")
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    lr_decays: list[int] = field(default_factory=list)  # epochs after which the learning rate was decayed
    privacy: dict | None = None  # DPSGD.report() of a differentially private run


@dataclass(frozen=True)
class ValidationMetric:
    """The validation metric a model's ``fit`` is handed; early stopping and model choices maximise it.

    ``name`` labels it in the training history; ``evaluate(model, evalset)``
    computes it by ranking the whole catalogue; ``of_ranks(ranks)`` computes the
    same figure from each case's 1-based target ranks (``inf`` = not ranked),
    for a model that ranks its own candidates (the two-stage reranker).
    """

    name: str
    evaluate: Callable[[Any, Any], float]
    of_ranks: Callable[[Sequence[np.ndarray]], float]


def seed_everything(seed: int) -> None:
    """Seed python, numpy's legacy global generator and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


def train(
    module: torch.nn.Module,
    batches: Callable[[int, np.random.Generator], Iterable[Any]],
    loss_fn: Callable[..., torch.Tensor],
    config: TrainConfig,
    evaluate: Callable[[], float] | None = None,
    *,
    metric: str = "metric",
    name: str = "train",
    params: Iterable[torch.nn.Parameter] | None = None,
    privacy: DPSGD | None = None,
) -> TrainResult:
    """Train ``module`` in place; returns the :class:`TrainResult` (best weights restored).

    ``metric`` names ``evaluate``'s value in the history and the log; ``name``
    labels the log lines and the progress bar.
    """
    cfg = config
    if not isinstance(cfg.epochs, int) or isinstance(cfg.epochs, bool):
        raise ValueError(f"epochs must be an integer here, got {cfg.epochs!r} (a model resolves 'auto' "
                         "from its data before training)")
    if not _takes_module(loss_fn):
        raise TypeError("loss_fn must take (module, batch) and run the forward through module "
                        "(under torch.distributed it is the DistributedDataParallel wrapper)")
    if privacy is not None:
        _check_private(cfg, evaluate)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    seed_everything(cfg.seed)
    params = list(module.parameters()) if params is None else list(params)
    optimizer = _Optimizer(module, params, cfg, wrap=privacy.attach if privacy is not None else None)
    average = _WeightAverage(module, cfg.ema_decay) if cfg.ema_decay is not None else None
    step_loss = loss_fn
    if cfg.compile:
        step_loss = torch.compile(loss_fn)  # type: ignore[assignment]

    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    bad_evals = 0
    start_epoch = 1
    ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_FILE if cfg.checkpoint_dir else None
    ck = None
    if ckpt_path is not None and cfg.resume and dist_utils.is_main() and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if ckpt_path is not None and cfg.resume:
        # rank 0 reads and sends it: other nodes need not share rank 0's file system
        ck = dist_utils.broadcast_object(ck)
    if ck is not None:
        module.load_state_dict(ck["module"])
        optimizer.load_state_dict(ck["optimizer"])
        if average is not None:
            average.load_state_dict(ck["average"])
        best_state = ck.get("best_state")
        result.history = list(ck["history"])
        result.best_epoch = int(ck["best_epoch"])
        result.best_metric = float(ck["best_metric"])
        bad_evals = int(ck["bad_evals"])
        result.lr_decays = list(ck.get("lr_decays", []))  # the rate itself is in the optimiser state
        start_epoch = int(ck["epoch"]) + 1
        result.epochs_run = int(ck["epoch"])
        if ck.get("finished"):  # it had stopped early
            start_epoch = cfg.epochs + 1
            result.stopped_early = True
        log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)

    # the module the loss goes through: the DDP wrapper when distributed
    rank, world = dist_utils.rank(), dist_utils.world_size()
    model: torch.nn.Module = module
    if world > 1:
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        model = torch.nn.parallel.DistributedDataParallel(
            module, process_group=dist_utils.cpu_group() if on_cpu else None)
    main = rank == 0

    autocast = (
        # "auto" stays off under DP: per-user gradients are computed in float32
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if resolve_bf16(cfg.bf16) and (privacy is None or cfg.bf16 is True)
        else (lambda: nullcontext())
    )
    t_train = time.perf_counter()
    pbar = None
    if cfg.progress and main:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.epochs, initial=start_epoch - 1, desc=name, unit="epoch", leave=False)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            t0 = time.perf_counter()
            es = _epoch_seed(cfg.seed, epoch)
            random.seed(es)
            torch.manual_seed(es)
            rng = np.random.default_rng(es)
            optimizer.set_lr(lr_at(cfg, epoch, len(result.lr_decays)))
            module.train()
            total, n = 0.0, 0
            for batch in dist_utils.shard(batches(epoch, rng), rank, world):
                if privacy is not None:  # per-user clipped, noised step (attnrec.privacy)
                    if privacy.exhausted:
                        break
                    total += privacy.step(model, batch, loss_fn)
                else:
                    with autocast():
                        loss = step_loss(model, batch)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip:
                        _clip_grad_norm(params, cfg.grad_clip)
                    optimizer.step()
                    total += float(loss.detach())
                n += 1
                if average is not None:  # after each step, whichever kind
                    average.update()
                if pbar is not None and n % 20 == 0:
                    pbar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
            if world > 1:  # mean loss over all ranks' batches
                total, n = dist_utils.all_reduce_sum([total, n])
            train_seconds = time.perf_counter() - t0
            rec: dict[str, Any] = {"epoch": epoch, "loss": total / max(1, n), "seconds": train_seconds}
            improved = False
            if evaluate is not None and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                module.eval()
                t_eval = time.perf_counter()
                value = float("nan")
                with average.applied() if average is not None else nullcontext():
                    if main:  # rank 0 evaluates; every rank keeps the same books
                        with torch.no_grad():
                            value = float(evaluate())
                    value = dist_utils.broadcast_object(value)
                    rec[metric] = value
                    rec["eval_seconds"] = time.perf_counter() - t_eval
                    if value > result.best_metric:
                        result.best_metric, result.best_epoch = value, epoch
                        best_state = copy.deepcopy(module.state_dict())
                        bad_evals = 0
                        improved = True
                    else:
                        bad_evals += 1
            elif evaluate is None:
                result.best_epoch = epoch
            # evaluated this epoch and the n-th bad evaluation in a row (improving resets bad_evals)
            plateau = (cfg.lr_decay_patience and metric in rec and bad_evals > 0
                       and bad_evals % cfg.lr_decay_patience == 0)
            if plateau or epoch in cfg.lr_decay_epochs:
                optimizer.scale_lr(cfg.lr_decay_factor)
                result.lr_decays.append(epoch)
                rec["lr_decayed"] = True
            result.history.append(rec)
            result.epochs_run = epoch
            log.info(
                "%s epoch %d loss %.4f %s %.1fs%s", name, epoch, rec["loss"],
                f"{metric} {rec[metric]:.4f}" if metric in rec else "", train_seconds,
                " *" if improved else "",
            )
            if rec.get("lr_decayed"):
                log.info("%s learning rate x%g after epoch %d", name, cfg.lr_decay_factor, epoch)
            if pbar is not None:
                post = {"loss": f"{rec['loss']:.4f}"}
                if result.best_epoch and math.isfinite(result.best_metric):
                    post[f"best {metric}"] = f"{result.best_metric:.4f}"
                pbar.set_postfix(post)
                pbar.update(1)
            stop = cfg.patience is not None and evaluate is not None and bad_evals >= cfg.patience
            over_budget = cfg.max_seconds is not None and time.perf_counter() - t_train > cfg.max_seconds
            # clocks differ between ranks: rank 0 decides for all
            stop, over_budget = dist_utils.broadcast_object((stop, over_budget))
            if ckpt_path is not None and main:  # "finished" = stopped early: resuming must not train further
                _save_checkpoint(ckpt_path, module, optimizer, result, best_state, bad_evals, epoch, stop,
                                 average)
            if stop:
                result.stopped_early = True
                log.info("early stop at epoch %d; best epoch %d (%s %.4f)", epoch, result.best_epoch,
                         metric, result.best_metric)
                break
            if over_budget:
                log.warning("time budget of %.0fs reached after epoch %d", cfg.max_seconds, epoch)
                break
            if privacy is not None and privacy.exhausted and epoch < cfg.epochs:
                log.warning("privacy budget spent after epoch %d: stopping", epoch)
                break
    finally:
        if pbar is not None:
            pbar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    elif average is not None:  # no validation: the model returned is the average at the last step
        average.copy_to_module()
    module.eval()
    result.seconds = time.perf_counter() - t_train
    if privacy is not None:
        result.privacy = privacy.report()
    return result


def _check_private(cfg: TrainConfig, evaluate: Callable[[], float] | None) -> None:
    """Options the DP step does not support get a clear error instead of a silent mismatch."""
    if evaluate is not None:  # picking the best epoch on users' held-out items is not accounted for
        raise ValueError("differentially private training runs its planned epochs without "
                         "validation (early stopping would spend privacy budget unaccounted)")
    if dist_utils.world_size() > 1:
        raise ValueError("differential privacy is single-process: run without torchrun")
    bad = [name for name, on in (("bf16", cfg.bf16 is True), ("compile", cfg.compile),
                                 ("resume", cfg.resume)) if on]
    if bad:
        raise ValueError(f"{', '.join(bad)} cannot be combined with privacy_epsilon "
                         "(resume would restart the privacy accountant)")


class _Optimizer:
    """AdamW for dense parameters, ``SparseAdam`` for sparse-gradient embedding tables.

    ``SparseAdam`` is Adam applied lazily to the rows a step touched (no weight
    decay): the only optimiser in torch that accepts sparse gradients.
    """

    def __init__(self, module: torch.nn.Module, params: list[torch.nn.Parameter], cfg: TrainConfig,
                 wrap: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] | None = None):
        sparse_ids = {id(m.weight) for m in module.modules()
                      if isinstance(m, torch.nn.Embedding) and m.sparse}
        dense = [p for p in params if id(p) not in sparse_ids]
        sparse = [p for p in params if id(p) in sparse_ids]
        self.optimizers: list[torch.optim.Optimizer] = []
        if dense:  # torch optimisers refuse an empty parameter list
            self.optimizers.append(torch.optim.AdamW(dense, lr=cfg.lr, betas=tuple(cfg.betas),
                                                     weight_decay=cfg.weight_decay))
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(sparse, lr=cfg.lr, betas=tuple(cfg.betas)))
        if wrap is not None:  # differential privacy: one dense optimiser, wrapped (DPOptimizer)
            if sparse:
                raise ValueError("sparse gradients cannot be combined with differential privacy")
            self.optimizers = [wrap(o) for o in self.optimizers]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def set_lr(self, lr: float) -> None:
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] = lr

    def scale_lr(self, factor: float) -> None:
        for o in self.optimizers:
            for g in o.param_groups:
                g["lr"] *= factor

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        states = state["optimizers"] if "optimizers" in state else [state]  # older checkpoints: one AdamW
        if len(states) != len(self.optimizers):
            raise ValueError(f"checkpoint has {len(states)} optimiser states, this model needs "
                             f"{len(self.optimizers)} (sparse embeddings switched on or off?)")
        for o, st in zip(self.optimizers, states):
            o.load_state_dict(st)


class _WeightAverage:
    """An exponential moving average of a module's parameters, updated after every optimiser step.

    The average is torch's ``AveragedModel`` with its EMA update; ``applied()`` puts
    the averaged parameters into the module for the duration of a ``with`` block
    (validation and the copy of the best weights see the average) and puts the live
    ones back for training. Buffers are not averaged: they are the module's own.
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"ema_decay must be strictly between 0 and 1, got {decay!r}")
        self.module = module
        self.averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(float(decay)),
                                      use_buffers=False)

    def update(self) -> None:
        self.averaged.update_parameters(self.module)

    def copy_to_module(self) -> None:
        with torch.no_grad():
            for live, avg in zip(self.module.parameters(), self.averaged.module.parameters()):
                live.copy_(avg)

    @contextmanager
    def applied(self):
        saved = [p.detach().clone() for p in self.module.parameters()]
        self.copy_to_module()
        try:
            yield
        finally:
            with torch.no_grad():
                for live, kept in zip(self.module.parameters(), saved):
                    live.copy_(kept)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)


def _clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_`` that also handles sparse gradients (coalesced first: duplicates summed)."""
    grads = []
    for p in params:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
            grads.append(p.grad._values())
        else:
            grads.append(p.grad)
    if not grads:
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    coef = max_norm / (float(total) + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)


def _takes_module(loss_fn: Callable[..., torch.Tensor]) -> bool:
    """Whether ``loss_fn`` has the ``(module, batch)`` signature."""
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return False
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())


def _save_checkpoint(path: Path, module, optimizer, result: TrainResult, best_state, bad_evals: int,
                     epoch: int, finished: bool, average: _WeightAverage | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ck = {
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_metric": result.best_metric,
        "bad_evals": bad_evals,
        "lr_decays": result.lr_decays,
        "epoch": epoch,
        "finished": finished,
    }
    if best_state is not None:
        ck["best_state"] = best_state
    if average is not None:
        ck["average"] = average.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written checkpoint
