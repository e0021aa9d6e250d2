"""The one model contract every recommender in attnrec follows.

In the spirit of scikit-learn / implicit:

* the constructor only stores hyperparameters (``get_params`` returns them);
* ``fit(data, valid=None) -> self`` learns; learned state ends in ``_``;
* ``score(histories)`` returns full-catalogue scores, ``(B, n_items + 1)``,
  column 0 (padding) is ``-inf``; an empty history gets the one popularity
  fallback (:func:`popularity_scores`); subclasses implement ``_score``;
* ``recommend(histories, k, ...)`` returns dense ids and scores of the top-k
  with already-seen items excluded by default (:mod:`attnrec.ranking`);
* anything more is an optional capability the model *declares* in
  ``capabilities`` (:mod:`attnrec.models.capabilities`); ``supports(cap)``
  answers callers, and an undeclared one raises :class:`CapabilityError`;
* ``save(dir)`` / ``load(dir)`` write and read a self-describing bundle
  directory: ``config.json`` (class, hyperparameters, sizes), id maps as JSON,
  tensors as safetensors and the fit sequences as ``.npz`` — no pickle.

A "user" is represented by their history (a 1-D array of dense item ids,
oldest first); ``users`` (dense user ids) are passed along for models that
keep per-user state.
"""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from attnrec.data.dataset import SequenceData, load_sequences_npz, save_sequences_npz
from attnrec.jsonable import to_jsonable
from attnrec.models.capabilities import (
    CAPABILITY_METHODS,
    AttentionMaps,
    Capability,
    CapabilityError,
    Explanation,
)
from attnrec.ranking import exclusion_mask, top_k

__all__ = ["Recommender", "Capability", "CapabilityError", "Explanation", "AttentionMaps",
           "register", "get_model_class", "available_models", "popularity_scores"]

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
_REGISTRY: dict[str, type["Recommender"]] = {}


def register(name: str):
    """Class decorator: make a model available by ``name`` in the CLI and bundles."""

    def deco(cls: type[Recommender]) -> type[Recommender]:
        cls.model_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


# The registry is full whenever this module can be used: importing it runs the package's
# ``attnrec/models/__init__.py`` first, which imports every model module.
def get_model_class(name: str) -> type["Recommender"]:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def popularity_scores(data: SequenceData) -> torch.Tensor:
    """The popularity order as ``(n_items + 1,)`` float32 scores (column 0 ``-inf``).

    Most training interactions first; equally popular items newest first (the
    item whose first interaction came later gathered its count faster), then
    the higher id. Scores are the resulting order, ``n_items`` for the top item
    down to 1, so they never tie and stay exact in float32 whatever the counts.
    This is the ``pop`` model and the fallback of every model for an empty history.
    """
    n = data.n_items + 1
    counts = data.item_counts().astype(np.float64)
    # first appearance: earliest timestamp, or first position in the log without times
    key = data.timestamps if data.timestamps is not None else np.arange(len(data.items), dtype=np.float64)
    first_seen = np.full(n, np.inf)
    np.minimum.at(first_seen, data.items, key)
    first_seen[~np.isfinite(first_seen)] = -np.inf  # never seen: oldest
    order = np.lexsort((np.arange(n), first_seen, counts))  # ascending: least popular first
    scores = np.empty(n, dtype=np.float32)
    scores[order] = np.arange(n, dtype=np.float32)
    scores[0] = -np.inf
    return torch.from_numpy(scores)


class Recommender:
    """Base class; subclasses implement ``_fit``, ``_score`` and tensor state.

    Optional capabilities (:mod:`attnrec.models.capabilities`) are declared in
    ``capabilities``; their methods here refuse with :class:`CapabilityError`
    until a subclass that declares them implements them.
    """

    model_name: ClassVar[str] = "base"
    #: whether the model uses the order of a history (sequential) or only its set
    sequential: ClassVar[bool] = False
    #: the optional capabilities this model implements
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: what an :class:`Explanation`'s weights are (models declaring ``EXPLAIN``)
    explain_method: ClassVar[str] = "none"
    #: ``score`` of one history is a sparse sum or a lookup (no network forward):
    #: cheap enough for the service to run on its event loop
    light_scoring: ClassVar[bool] = False
    #: hyperparameters whose default changed, with the value a bundle written before the
    #: change was trained with: a bundle that does not list one loads with this value
    older_bundle_params: ClassVar[Mapping[str, Any]] = {}
    #: set by :func:`attnrec.pipeline.fit_for_test` after a validation run (``training_summary()``)
    validation_: dict[str, Any] | None = None
    #: set by :meth:`load`: the bundle's ``metrics.json`` and ``info``
    bundle_metrics_: Mapping[str, Any] = MappingProxyType({})
    bundle_info_: Mapping[str, Any] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for cap in cls.capabilities:
            for method in CAPABILITY_METHODS[cap]:
                if getattr(cls, method) is getattr(Recommender, method):
                    raise TypeError(f"{cls.__name__} declares {cap.value!r} but does not implement {method}()")

    @classmethod
    def supports(cls, capability: Capability) -> bool:
        """Whether this model declares ``capability``."""
        return capability in cls.capabilities

    def privacy_guarantee(self) -> dict[str, Any] | None:
        """The differential-privacy guarantee of the last fit (see :mod:`attnrec.privacy`), or None."""
        return None

    def selects_on_validation(self) -> bool:
        """Whether ``fit(train, valid, metric)`` chooses its stopping point on validation.

        True for models that declare ``REFIT``, unless their settings rule it out
        (a differentially private model trains for a fixed number of epochs).
        """
        return self.supports(Capability.REFIT)

    def _refuse(self, capability: Capability, hint: str = "") -> CapabilityError:
        return CapabilityError(self.model_name, capability, hint)

    # ---- hyperparameters -------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name in sig.parameters
            if name != "self" and sig.parameters[name].kind is not inspect.Parameter.VAR_KEYWORD
        }

    def set_params(self, **params: Any) -> "Recommender":
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"{type(self).__name__} has no hyperparameter {k!r}; valid: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- fitting ---------------------------------------------------------
    def fit(self, data: SequenceData, valid: Any = None, metric: Any = None) -> "Recommender":
        """Learn from ``data``.

        ``valid`` (an :class:`EvalSet`) and ``metric`` (an
        :class:`attnrec.training.ValidationMetric`, e.g.
        :func:`attnrec.evaluation.validation_metric`) drive early stopping and
        validation choices in the models that make them; others ignore both.
        """
        if data.n_interactions == 0:
            raise ValueError("cannot fit on an empty dataset (0 interactions)")
        t0 = time.perf_counter()
        self.n_items_ = int(data.n_items)
        self.item_map_ = data.item_map
        self.user_map_ = data.user_map
        self.train_data_ = data
        self.item_counts_ = data.item_counts().astype(np.float32)
        self._fit(data, valid, metric)
        self.fit_seconds_ = time.perf_counter() - t0
        log.info("%s fitted in %.1fs", type(self).__name__, self.fit_seconds_)
        return self

    def _fit(self, data: SequenceData, valid: Any, metric: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load() first")

    # ---- inference -------------------------------------------------------
    def score(self, histories: Sequence[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        """Scores for every item: float32 tensor ``(B, n_items + 1)``, column 0 = ``-inf``.

        An empty history gets :meth:`popularity_scores` (the one popularity fallback).
        """
        self._check_fitted()
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        with torch.no_grad():
            s = self._score(histories, users).float()
        empty = [b for b, h in enumerate(histories) if len(h) == 0]
        if empty:
            s[empty] = self.popularity_scores()
        s[:, 0] = float("-inf")
        return s

    def _score(self, histories: list[np.ndarray], users: np.ndarray | None) -> torch.Tensor:  # pragma: no cover
        """``(B, n_items + 1)`` scores of non-padding items (column 0 and empty rows are overwritten)."""
        raise NotImplementedError

    def popularity_scores(self) -> torch.Tensor:
        """:func:`popularity_scores` of the fit data, ``(n_items + 1,)`` (memoised; do not modify)."""
        self._check_fitted()
        data, memo = self.__dict__.get("_popularity", (None, None))
        if data is not self.train_data_ or len(memo) != self.n_items_ + 1:  # new data, or add_items
            memo = popularity_scores(self.train_data_)
            self._popularity = (self.train_data_, memo)
        return memo

    def recommend(
        self,
        histories: Sequence[np.ndarray],
        k: int = 10,
        exclude_history: bool = True,
        exclude: Sequence[Sequence[int]] | None = None,
        users: np.ndarray | None = None,
        batch_size: int = 512,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` dense item ids and scores per history; id 0 pads rows with fewer than k candidates."""
        self._check_fitted()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ids_out, sc_out = [], []
        for start in range(0, len(histories), batch_size):
            hb = histories[start : start + batch_size]
            ub = None if users is None else users[start : start + batch_size]
            eb = None if exclude is None else exclude[start : start + batch_size]
            with torch.no_grad():
                s = self.score(hb, ub).float()
            mask = exclusion_mask(hb, s.shape[1], exclude_history, eb)
            s = s.masked_fill(mask, float("-inf"))
            idx, vals = top_k(s, k)
            if idx.shape[1] < k:  # asked for more than the catalogue holds
                pad = k - idx.shape[1]
                idx = torch.nn.functional.pad(idx, (0, pad), value=0)
                vals = torch.nn.functional.pad(vals, (0, pad), value=float("-inf"))
            ids_out.append(idx.numpy())
            sc_out.append(vals.numpy())
        if not ids_out:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate(ids_out), np.concatenate(sc_out)

    def user_history(self, user: int) -> np.ndarray:
        """The fit-time history of dense user ``user``."""
        self._check_fitted()
        return self.train_data_.sequence(user)

    # ---- optional capabilities (refused unless declared and implemented) ---------------
    def explain_items(self, histories: Sequence[np.ndarray], items: Sequence[Sequence[int]],
                      users: np.ndarray | None = None) -> list[list[Explanation]]:
        """``EXPLAIN``: per history ``b``, one :class:`Explanation` for each item of ``items[b]``."""
        raise self._refuse(Capability.EXPLAIN)

    def item_vectors(self) -> np.ndarray:
        """``VECTORS``: ``(n_items + 1, d)`` float32 item vectors (row 0 = padding)."""
        raise self._refuse(Capability.VECTORS, "its scores are not inner products of vectors")

    def query_vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """``VECTORS``: ``(B, d)`` float32 queries; ``score = query_vectors @ item_vectors().T``."""
        raise self._refuse(Capability.VECTORS, "its scores are not inner products of vectors")

    def attention_maps(self, histories: Sequence[np.ndarray]) -> AttentionMaps:
        """``ATTENTION``: the self-attention of each history, per layer and head."""
        raise self._refuse(Capability.ATTENTION, "it has no self-attention")

    def refit_params(self) -> dict[str, Any]:
        """``REFIT``: parameters for the refit on train + validation (e.g. the chosen epoch count)."""
        raise self._refuse(Capability.REFIT, "it has no validation-driven training")

    def training_summary(self) -> dict[str, Any]:
        """``REFIT``: ``{"best_epoch", "best_metric", "history"}`` of the last fit (history: per epoch)."""
        raise self._refuse(Capability.REFIT, "it has no validation-driven training")

    def add_items(self, rows: Any) -> list[int]:
        """``ADD_ITEMS``: add or re-describe catalogue rows without retraining; their dense ids."""
        raise self._refuse(Capability.ADD_ITEMS, "new items need retraining; use a content-aware model "
                           "such as sasrec-content")

    def similar_scores(self, items: Sequence[int]) -> torch.Tensor:
        """``SIMILAR_ITEMS``: ``(len(items), n_items + 1)`` similarity of every item to each given one.

        Column 0 is ``-inf``; callers exclude the item itself when ranking.
        """
        raise self._refuse(Capability.SIMILAR_ITEMS, "it has no item-item similarity")

    def warm_start_from(self, fitted: "Recommender") -> "Recommender":
        """``WARM_START``: make the next ``fit`` start from ``fitted``'s weights; returns self."""
        raise self._refuse(Capability.WARM_START, "it is fitted from scratch every time")

    # ---- persistence -----------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors to store (besides item counts and sequences)."""
        return {}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def _extra_config(self) -> dict[str, Any]:
        """Learned non-tensor state (JSON-serialisable)."""
        return {}

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        pass

    def save(self, path: str | Path, metrics: dict | None = None, info: dict | None = None) -> Path:
        """Write a bundle directory (created if needed) and return its path."""
        from safetensors.torch import save_file

        import attnrec

        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "format": BUNDLE_FORMAT,
            "attnrec_version": attnrec.__version__,
            "model": self.model_name,
            "params": self.get_params(),
            "n_items": self.n_items_,
            "extra": self._extra_config(),
            "info": info or {},
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._state_tensors().items()}
        tensors["item_counts"] = torch.from_numpy(self.item_counts_)
        save_file(tensors, str(path / "weights.safetensors"))
        save_sequences_npz(path / "sequences.npz", self.train_data_)
        (path / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
        # config last: its presence marks a complete bundle
        (path / "config.json").write_text(json.dumps(to_jsonable(config), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Recommender":
        """Load any bundle (the class is read from ``config.json``)."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.exists():
            raise FileNotFoundError(f"{path} is not an attnrec bundle (no config.json)")
        config = json.loads(cfg_file.read_text())
        if config.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: unsupported bundle format {config.get('format')!r}")
        model_cls = get_model_class(config["model"])
        if cls is not Recommender and not issubclass(model_cls, cls):
            raise TypeError(f"{path} holds a {model_cls.__name__}, not a {cls.__name__}")
        model = model_cls(**{**model_cls.older_bundle_params, **config["params"]})
        data = load_sequences_npz(path / "sequences.npz")
        tensors = load_file(str(path / "weights.safetensors"))
        model.n_items_ = int(config["n_items"])
        model.item_map_ = data.item_map
        model.user_map_ = data.user_map
        model.train_data_ = data
        model.item_counts_ = tensors.pop("item_counts").numpy()
        model._load_extra_config(config.get("extra", {}))
        model._load_state_tensors(tensors)
        model.bundle_info_ = config.get("info", {})
        metrics_file = path / "metrics.json"
        model.bundle_metrics_ = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        return model
