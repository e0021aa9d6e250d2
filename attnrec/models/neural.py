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
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch

from attnrec import privacy as dp
from attnrec.data.dataset import EvalSet, IdMap, SequenceData
from attnrec.jsonable import to_jsonable
from attnrec.models import attribution
from attnrec.models.base import Recommender
from attnrec.models.capabilities import AttentionMaps, Capability, Explanation
from attnrec.training import TrainConfig, TrainResult, ValidationMetric, train


class TrainedModel(Recommender):
    """A model whose parameters are learnt by :func:`attnrec.training.train`."""

    capabilities = frozenset({Capability.REFIT})
    #: this model's training options and their defaults (a model changes defaults in a dataclass subclass)
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
        # a scheduled rate keeps the selection run's horizon: refit epoch e gets epoch e's rate
        horizon = self.lr_schedule_epochs or int(self.train_config().epochs)
        return {"epochs": best, "patience": None, "max_seconds": None,
                "lr_decay_patience": None, "lr_decay_epochs": decays, "lr_schedule_epochs": horizon}

    def training_summary(self) -> dict[str, Any]:
        """The last fit's chosen epoch, its validation metric (None without validation) and curve."""
        self._check_fitted()
        return {"best_epoch": self.best_epoch_, "best_metric": self.best_metric_,
                "history": list(self.history_ or [])}

    # ---- differential privacy (attnrec.privacy) --------------------------
    @property
    def private(self) -> bool:
        """Trained with user-level DP-SGD (``privacy_epsilon`` set and finite)."""
        return dp.is_private(self.privacy_epsilon)

    def privacy_guarantee(self) -> dict[str, Any] | None:
        return getattr(self, "privacy_", None)

    def selects_on_validation(self) -> bool:
        """Never under DP: a private model trains for its planned epochs (see attnrec.privacy)."""
        return not self.private

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
               evaluate: Callable[[], float] | None, metric: ValidationMetric | None,
               privacy: dp.DPSGD | None = None) -> TrainResult:
        """Train ``net``; early stopping on ``evaluate()`` (named ``metric.name``) when it is given.

        ``privacy``: the DP-SGD hook of a model that supports ``privacy_epsilon``; a model
        that does not pass one refuses the option rather than ignore it.
        """
        if self.private and privacy is None:
            raise ValueError(f"privacy_epsilon is supported by sasrec and bert4rec, not {self.model_name}")
        cfg = self.train_config()
        if evaluate is None:
            cfg.patience = None
        res = train(net, batches, loss_fn, cfg, evaluate, metric=metric.name if metric else "metric",
                    name=self.model_name, privacy=privacy)
        self.privacy_ = res.privacy
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
            "best_metric": to_jsonable(getattr(self, "best_metric_", None)),
            "epochs_run": getattr(self, "epochs_run_", None),
            "lr_decays": getattr(self, "lr_decays_", []),
            "privacy": getattr(self, "privacy_", None),
        }

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        self.history_ = extra.get("history", [])
        self.best_epoch_ = extra.get("best_epoch")
        self.best_metric_ = extra.get("best_metric")
        self.epochs_run_ = extra.get("epochs_run")
        self.lr_decays_ = extra.get("lr_decays", [])
        self.privacy_ = extra.get("privacy")


class NeuralSequenceModel(TrainedModel):
    """Base class of the attention models that score by ``encode(histories) @ net_.output_weight().T``."""

    sequential = True
    capabilities = TrainedModel.capabilities | {Capability.EXPLAIN, Capability.VECTORS,
                                                Capability.ATTENTION, Capability.SIMILAR_ITEMS,
                                                Capability.WARM_START}
    explain_method = "attention"
    #: ATTENTION: whether a position attends only to itself and earlier positions
    attention_causal: ClassVar[bool] = True
    #: ATTENTION: positions the network appends after the history (BERT4Rec's [MASK])
    attention_extra: ClassVar[int] = 0
    net_: torch.nn.Module
    _warm_from: "NeuralSequenceModel | None" = None

    def _build(self, n_items: int) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_for_fit(self, data: SequenceData) -> torch.nn.Module:
        """``_build`` for a fit on ``data``, starting from the warm-start model's weights if any."""
        net = self._build(data.n_items)
        warm, self._warm_from = self._warm_from, None
        if warm is not None:
            net.load_state_dict(_transplant(warm, data.item_map, net.state_dict()))
        return net

    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - abstract
        """Query vectors ``(B, d')`` whose dot products with ``net_.output_weight()`` are the scores."""
        raise NotImplementedError

    def _train_net(self, batches: Callable[[int, np.random.Generator], Iterable[Any]],
                   loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                   valid: EvalSet | None, metric: ValidationMetric | None,
                   privacy: dp.DPSGD | None = None) -> TrainResult:
        """Train ``net_``; early stopping on ``metric`` over ``valid`` when given (never under
        ``privacy``: its epochs are fixed in advance, validation is not looked at)."""
        evaluate = None
        if privacy is None and self._validates(valid, metric):
            evaluate = lambda: metric.evaluate(self, valid)  # noqa: E731
        return self._train(self.net_, batches, loss_fn, evaluate, metric, privacy=privacy)

    def _privacy_hook(self, n_users: int, n_rows: int) -> dp.DPSGD:
        """The DP-SGD hook for ``n_rows`` user rows (delta defaults to ``1 / n_users``)."""
        if self.loss != "ce":
            raise ValueError(f"privacy_epsilon needs loss='ce' (per-user full softmax), got {self.loss!r}")
        delta = self.privacy_delta if self.privacy_delta is not None else dp.default_delta(n_users)
        return dp.DPSGD(dp.PrivacyConfig(
            epsilon=float(self.privacy_epsilon), delta=float(delta), n_rows=n_rows,
            expected_batch_size=int(self.batch_size), epochs=int(self.epochs),
            max_grad_norm=float(self.privacy_clip), accountant=self.privacy_accountant,
            microbatch=int(self.privacy_microbatch), seed=int(self.seed)))

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def _score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        q = self.encode(histories)  # (B, d')
        return (q @ self.net_.output_weight().T).float()  # (B, V + 1)

    # ---- capabilities ----------------------------------------------------
    def warm_start_from(self, fitted: Recommender) -> "NeuralSequenceModel":
        """The next ``fit`` starts from ``fitted``'s network (same class and architecture)."""
        if type(fitted) is not type(self):
            raise TypeError(f"a {type(self).__name__} cannot start from a {type(fitted).__name__}")
        fitted._check_fitted()
        self._warm_from = fitted
        return self

    @torch.no_grad()
    def item_vectors(self) -> np.ndarray:
        self._check_fitted()
        return np.ascontiguousarray(self.net_.output_weight().detach().float().cpu().numpy())

    @torch.no_grad()
    def query_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        self._check_fitted()
        q = self.encode([np.asarray(h, dtype=np.int64) for h in histories])
        return np.ascontiguousarray(q.float().cpu().numpy())

    def attention_maps(self, histories: Sequence[np.ndarray]) -> AttentionMaps:
        weights, lens = self.attention_weights([np.asarray(h, dtype=np.int64) for h in histories])
        return AttentionMaps(weights, lens, self.attention_causal, self.attention_extra)

    @torch.no_grad()
    def explain_items(self, histories: Sequence[np.ndarray], items: Sequence[Sequence[int]],
                      users: np.ndarray | None = None) -> list[list[Explanation]]:
        """Per recommended item: rollout share times that item's score gain from each history item.

        See :func:`attnrec.models.attribution.rollout_gains`.
        """
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        maps = self.attention_maps(histories)
        return attribution.rollout_gains(self.explain_method, maps, histories, items,
                                         lambda b, visible, rec: self._prefix_scores(visible, rec))

    @torch.no_grad()
    def _prefix_scores(self, visible: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(n, k)`` scores of ``items`` after each prefix of ``visible`` (one batched forward)."""
        q = self.encode([visible[: i + 1] for i in range(len(visible))])  # (n, d')
        return (q @ self.net_.output_weight()[torch.from_numpy(items)].T).double().numpy()

    @torch.no_grad()
    def similar_scores(self, items: Sequence[int]) -> torch.Tensor:
        """Cosine similarity of the items' output vectors (the vectors every score is a dot product with)."""
        self._check_fitted()
        W = torch.nn.functional.normalize(self.net_.output_weight().float(), dim=1)
        s = W[torch.as_tensor(np.asarray(items, dtype=np.int64))] @ W.T  # (B, V + 1)
        s[:, 0] = float("-inf")
        return s

    # ---- persistence -----------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net_.state_dict().items()}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.net_ = self._build(self.n_items_)
        self.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_.eval()


def _transplant(old: NeuralSequenceModel, item_map: IdMap,
               fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``fresh`` (a new network's state) with ``old``'s weights where they fit.

    Item tables (row 0 padding, one row per item, maybe one special row after it
    such as BERT4Rec's [MASK]) are moved row by row to ``item_map``'s ids by raw
    id; items ``old`` does not know keep their fresh init. Other tensors are
    copied when the shapes agree.
    """
    src = np.asarray([old.item_map_.get(r, -1) for r in item_map.raw_ids], dtype=np.int64)
    have = torch.from_numpy(np.nonzero(src >= 0)[0] + 1)
    take = torch.from_numpy(src[src >= 0])
    n_old = int(old.n_items_)
    out = {}
    for k, v in fresh.items():
        w = old.net_.state_dict().get(k)
        if w is None or w.ndim == 0:
            out[k] = w.clone() if w is not None and w.shape == v.shape else v
            continue
        extra = w.shape[0] - (n_old + 1)
        if (extra in (0, 1) and "pos" not in k and v.shape[0] == len(item_map) + 1 + extra
                and w.shape[1:] == v.shape[1:]):
            moved = v.clone()
            moved[0] = w[0]
            moved[have] = w[take]
            if extra:
                moved[-1] = w[-1]
            out[k] = moved
        else:
            out[k] = w.clone() if w.shape == v.shape else v
    return out


def _option_defaults(config: type[TrainConfig]) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, default)`` for every training option of ``config``."""
    out = []
    for f in dataclasses.fields(config):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        out.append((f, default))
    return out
