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

from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch

from attnrec.data.dataset import EvalSet
from attnrec.jsonable import to_jsonable
from attnrec.models import attribution
from attnrec.models.base import Recommender
from attnrec.models.capabilities import AttentionMaps, Capability, Explanation
from attnrec.training import TrainConfig, TrainResult, train


class NeuralSequenceModel(Recommender):
    """Base class of the attention models trained by :func:`attnrec.training.train`."""

    sequential = True
    capabilities = frozenset({Capability.EXPLAIN, Capability.VECTORS, Capability.ATTENTION,
                              Capability.REFIT, Capability.SIMILAR_ITEMS})
    explain_method = "attention"
    #: ATTENTION: whether a position attends only to itself and earlier positions
    attention_causal: ClassVar[bool] = True
    #: ATTENTION: positions the network appends after the history (BERT4Rec's [MASK])
    attention_extra: ClassVar[int] = 0
    net_: torch.nn.Module

    def _build(self, n_items: int) -> torch.nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, histories: Sequence[np.ndarray]) -> torch.Tensor:  # pragma: no cover - abstract
        """Query vectors ``(B, d')`` whose dot products with ``net_.output_weight()`` are the scores."""
        raise NotImplementedError

    # ---- training --------------------------------------------------------
    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, patience=self.patience,
            eval_every=self.eval_every, metric="NDCG@10", seed=self.seed,
            checkpoint_dir=self.checkpoint_dir, resume=self.resume, bf16=self.bf16,
            compile=self.compile, num_threads=self.num_threads, progress=self.progress,
            max_seconds=self.max_seconds, lr_decay_patience=self.lr_decay_patience,
            lr_decay_epochs=tuple(self.lr_decay_epochs or ()), desc=self.model_name,
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
        return {"epochs": best, "patience": None, "max_seconds": None,
                "lr_decay_patience": None, "lr_decay_epochs": decays}

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
    def _score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        q = self.encode(histories)  # (B, d')
        return (q @ self.net_.output_weight().T).float()  # (B, V + 1)

    # ---- capabilities ----------------------------------------------------
    def training_summary(self) -> dict[str, Any]:
        self._check_fitted()
        return {"best_epoch": self.best_epoch_, "best_metric": self.best_metric_,
                "history": list(self.history_ or [])}

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

    def _extra_config(self) -> dict[str, Any]:
        return {
            "history": getattr(self, "history_", []),
            "best_epoch": getattr(self, "best_epoch_", None),
            "best_metric": to_jsonable(getattr(self, "best_metric_", None)),
            "epochs_run": getattr(self, "epochs_run_", None),
            "lr_decays": getattr(self, "lr_decays_", []),
        }

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        self.history_ = extra.get("history", [])
        self.best_epoch_ = extra.get("best_epoch")
        self.best_metric_ = extra.get("best_metric")
        self.epochs_run_ = extra.get("epochs_run")
        self.lr_decays_ = extra.get("lr_decays", [])
