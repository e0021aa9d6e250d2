"""What the models trained by :func:`attnrec.training.train` share besides their network.

:class:`TrainedModel` holds the training side: the training options (the fields
of the class's ``TrainConfig``, a :class:`attnrec.training.TrainConfig` subclass
that only changes defaults, are keyword arguments of the constructor and
hyperparameters in ``get_params``, so ``-p lr=...`` and bundles see them flat),
the training run with early stopping on a validation metric handed to ``fit``
and its bookkeeping (``history_``, ``best_epoch_``, ...), the refit settings
and the bundle state of the run.

:class:`NeuralSequenceModel` adds what SASRec and BERT4Rec share: full-catalogue
scoring from ``encode(histories) @ W.T`` and the network's bundle state. A
subclass supplies ``_build(n_items)`` (the network, stored in ``net_``),
``encode`` and ``_fit``; its constructor lists its own hyperparameters
explicitly and passes ``**train_options`` on to :meth:`TrainedModel._set_train_options`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch

from attnrec.data.dataset import EvalSet
from attnrec.models.base import Recommender
from attnrec.training import TrainConfig, TrainResult, ValidationMetric, train


class TrainedModel(Recommender):
    """A model whose parameters are learnt by :func:`attnrec.training.train`."""

    #: this model's training options and their defaults (a subclass overrides defaults in a subclass)
    TrainConfig: ClassVar[type[TrainConfig]] = TrainConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # the constructor's signature (read by get_params, help() and bundles) lists the
        # training options as keyword-only parameters after the model's own
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            own = [p for p in inspect.signature(init).parameters.values()
                   if p.kind is not inspect.Parameter.VAR_KEYWORD]
            names = {p.name for p in own}
            options = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                         annotation=f.type)
                       for f, default in _option_defaults(cls.TrainConfig) if f.name not in names]
            init.__signature__ = inspect.Signature(own + options)

    def _set_train_options(self, options: dict[str, Any]) -> None:
        """Store each training option (the class default where not given); refuse unknown names."""
        defaults = dict((f.name, d) for f, d in _option_defaults(self.TrainConfig))
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            valid = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
            raise TypeError(f"{type(self).__name__} has no hyperparameter {', '.join(map(repr, unknown))}; "
                            f"valid: {sorted(valid)}")
        for name, default in defaults.items():
            setattr(self, name, options.get(name, default))

    def train_config(self) -> TrainConfig:
        """The training options as the ``TrainConfig`` that :func:`~attnrec.training.train` runs."""
        return self.TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.TrainConfig)})

    def refit_params(self) -> dict[str, Any]:
        """Parameters for the final refit on train+valid: the best epoch count, no early stopping.

        The wall-clock guard is lifted: the refit runs exactly the chosen epochs
        (the selection run was already bounded by ``max_seconds``). Learning-rate
        decays the selection run made before its best epoch are replayed at the
        same epochs (the refit has no validation to detect a plateau).
        """
        self._check_fitted()
        best = max(1, int(self.best_epoch_))
        decays = [e for e in (getattr(self, "lr_decays_", None) or []) if e < best]
        return {"epochs": best, "patience": None, "max_seconds": None,
                "lr_decay_patience": None, "lr_decay_epochs": decays}

    def _validates(self, valid: EvalSet | None, metric: ValidationMetric | None) -> bool:
        """Whether ``fit`` got validation cases (then it must have got the metric to maximise)."""
        if valid is None or not len(valid):
            return False
        if metric is None:
            raise ValueError(f"{type(self).__name__}.fit got valid= without metric=: pass the validation "
                             "metric early stopping maximises, e.g. attnrec.evaluation.validation_metric()")
        return True

    def _train(self, net: torch.nn.Module, batches: Callable[[int, np.random.Generator], Iterable[Any]],
               loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
               evaluate: Callable[[], float] | None, metric: ValidationMetric | None) -> TrainResult:
        """Train ``net``; early stopping on ``evaluate()`` (named ``metric.name``) when it is given."""
        cfg = self.train_config()
        if evaluate is None:
            cfg.patience = None
        res = train(net, batches, loss_fn, cfg, evaluate, metric=metric.name if metric else "metric",
                    name=self.model_name)
        self.history_ = res.history
        self.best_epoch_ = res.best_epoch if evaluate is not None else res.epochs_run
        self.best_metric_ = res.best_metric if evaluate is not None else None
        self.epochs_run_ = res.epochs_run
        self.train_seconds_ = res.seconds
        self.lr_decays_ = list(res.lr_decays)
        net.eval()
        return res

    # ---- persistence -----------------------------------------------------
    def _extra_config(self) -> dict[str, Any]:
        return {
            "history": getattr(self, "history_", []),
            "best_epoch": getattr(self, "best_epoch_", None),
            "best_metric": _finite_or_none(getattr(self, "best_metric_", None)),
            "epochs_run": getattr(self, "epochs_run_", None),
            "lr_decays": getattr(self, "lr_decays_", []),
        }

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        self.history_ = extra.get("history", [])
        self.best_epoch_ = extra.get("best_epoch")
        self.best_metric_ = extra.get("best_metric")
        self.epochs_run_ = extra.get("epochs_run")
        self.lr_decays_ = extra.get("lr_decays", [])


class NeuralSequenceModel(TrainedModel):
    """Base class of the attention models that score by ``encode(histories) @ net_.output_weight().T``."""

    sequential = True
    #: ``warm_start_from(state)`` makes the next ``fit`` start from given weights (fine-tuning)
    supports_warm_start: ClassVar[bool] = True
    net_: torch.nn.Module
    _warm_state: dict[str, torch.Tensor] | None = None

    def _build(self, n_items: int) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def warm_start_from(self, state: dict[str, torch.Tensor]) -> "NeuralSequenceModel":
        """Start the next ``fit`` from ``state`` (a ``net_`` state dict) instead of a fresh init.

        Tensors whose shape differs from the new network's keep the fresh init;
        NaN rows (items new to the catalogue) are filled from it.
        """
        self._warm_state = state
        return self

    def _build_for_fit(self, n_items: int) -> torch.nn.Module:
        """``_build``, then the warm-start weights if any (used once)."""
        net = self._build(n_items)
        state, self._warm_state = self._warm_state, None
        if state:
            fresh = net.state_dict()
            merged = {}
            for k, v in fresh.items():
                w = state.get(k)
                if w is None or w.shape != v.shape:
                    merged[k] = v
                    continue
                w = w.to(v.dtype)
                merged[k] = torch.where(torch.isnan(w), v, w) if w.is_floating_point() else w
            net.load_state_dict(merged)
        return net

    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - abstract
        """Query vectors ``(B, d')`` whose dot products with ``net_.output_weight()`` are the scores."""
        raise NotImplementedError

    def _train_net(self, batches: Callable[[int, np.random.Generator], Iterable[Any]],
                   loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                   valid: EvalSet | None, metric: ValidationMetric | None) -> TrainResult:
        """Train ``net_``; early stopping on ``metric`` over ``valid`` when given."""
        evaluate = (lambda: metric.evaluate(self, valid)) if self._validates(valid, metric) else None
        return self._train(self.net_, batches, loss_fn, evaluate, metric)

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def score(self, histories: Sequence[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        self._check_fitted()
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        q = self.encode(histories)  # (B, d')
        s = (q @ self.net_.output_weight().T).float()  # (B, V + 1)
        empty = torch.tensor([len(x) == 0 for x in histories])
        if empty.any():  # no history: fall back to popularity
            s[empty] = torch.log1p(torch.from_numpy(np.asarray(self.item_counts_, dtype=np.float32)))
        s[:, 0] = float("-inf")
        return s

    # ---- persistence -----------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net_.state_dict().items()}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net_ = self._build(self.n_items_)
        self.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_.eval()


def _option_defaults(config: type[TrainConfig]) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, default)`` for every training option of ``config``."""
    out = []
    for f in dataclasses.fields(config):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out.append((f, default))
    return out


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)
