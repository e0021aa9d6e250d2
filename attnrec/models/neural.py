"""What the neural sequence models (SASRec, BERT4Rec) share besides their network.

:class:`NeuralSequenceModel` holds the parts that are the same for every model
trained by :func:`attnrec.training.train`: the training options turned into a
:class:`~attnrec.training.TrainConfig`, the training run with early stopping on
validation ``NDCG@10`` and its bookkeeping (``history_``, ``best_epoch_``, ...),
the refit settings, full-catalogue scoring from ``encode(histories) @ W.T`` and
the bundle state. A subclass supplies ``_build(n_items)`` (the network, stored in
``net_``), ``encode`` and ``_fit``; its constructor lists its hyperparameters
explicitly (scikit-learn style: ``get_params`` reads the signature).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from attnrec.data.dataset import EvalSet
from attnrec.models.base import Recommender
from attnrec.training import TrainConfig, TrainResult, resolve_bf16, train


class NeuralSequenceModel(Recommender):
    """Base class of the attention models trained by :func:`attnrec.training.train`."""

    sequential = True
    net_: torch.nn.Module

    def _build(self, n_items: int) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - abstract
        """Query vectors ``(B, d')`` whose dot products with ``net_.output_weight()`` are the scores."""
        raise NotImplementedError

    # ---- training --------------------------------------------------------
    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self._epochs_value(), lr=self.lr, weight_decay=self.weight_decay, patience=self.patience,
            eval_every=self.eval_every, metric="NDCG@10", seed=self.seed,
            checkpoint_dir=self.checkpoint_dir, resume=self.resume, bf16=resolve_bf16(self.bf16),
            compile=self.compile, num_threads=self.num_threads, progress=self.progress,
            max_seconds=self.max_seconds, lr_decay_patience=self.lr_decay_patience,
            lr_decay_epochs=tuple(self.lr_decay_epochs or ()), desc=self.model_name,
            # models without a schedule hyperparameter train at a constant rate
            lr_schedule=self.get_params().get("lr_schedule", "constant"),
            lr_schedule_epochs=self.get_params().get("lr_schedule_epochs"),
        )

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
        out = {"epochs": best, "patience": None, "max_seconds": None,
               "lr_decay_patience": None, "lr_decay_epochs": decays}
        if "lr_schedule" in self.get_params():  # the refit follows the selection run's schedule
            out["lr_schedule_epochs"] = self.lr_schedule_epochs or self._epochs_value()
        return out

    def _epochs_value(self) -> int:
        """The epoch budget of this fit (a subclass may resolve an ``"auto"`` value from the data)."""
        return int(self.epochs)

    def _train(self, batches: Callable[[int, np.random.Generator], Iterable[Any]],
               loss_fn: Callable[..., torch.Tensor], valid: EvalSet | None) -> TrainResult:
        """Train ``net_``; early stopping on validation NDCG@10 (full ranking) when ``valid`` is given."""
        evaluate_fn = None
        if valid is not None and len(valid):
            from attnrec.evaluation import evaluate

            def evaluate_fn() -> float:
                return evaluate(self, valid, ks=(10,))["NDCG@10"]

        cfg = self.train_config()
        if evaluate_fn is None:
            cfg.patience = None
        res = train(self.net_, batches, loss_fn, cfg, evaluate_fn)
        self.history_ = res.history
        self.best_epoch_ = res.best_epoch if evaluate_fn is not None else res.epochs_run
        self.best_metric_ = res.best_metric if evaluate_fn is not None else None
        self.epochs_run_ = res.epochs_run
        self.train_seconds_ = res.seconds
        self.lr_decays_ = list(res.lr_decays)
        self.net_.eval()
        return res

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


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)
