"""The one model contract every recommender in attnrec follows.

In the spirit of scikit-learn / implicit:

* the constructor only stores hyperparameters (``get_params`` returns them);
* ``fit(data, valid=None) -> self`` learns; learned state ends in ``_``;
* ``score(histories)`` returns full-catalogue scores, ``(B, n_items + 1)``,
  column 0 (padding) is ``-inf``;
* ``recommend(histories, k, ...)`` returns dense ids and scores of the top-k
  with already-seen items excluded by default;
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
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from attnrec.data.dataset import SequenceData, load_sequences_npz, save_sequences_npz

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


def get_model_class(name: str) -> type["Recommender"]:
    import attnrec.models  # noqa: F401  (populates the registry)

    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None


def available_models() -> list[str]:
    import attnrec.models  # noqa: F401

    return sorted(_REGISTRY)


def exclusion_mask(
    histories: Sequence[np.ndarray],
    n_columns: int,
    exclude_history: bool = True,
    exclude: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Boolean ``(B, n_columns)`` mask of items that must not be recommended.

    Column 0 (padding) is always excluded.
    """
    B = len(histories)
    mask = torch.zeros(B, n_columns, dtype=torch.bool)
    mask[:, 0] = True
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    if exclude_history:
        for b, h in enumerate(histories):
            if len(h):
                rows.append(np.full(len(h), b))
                cols.append(np.asarray(h, dtype=np.int64))
    if exclude is not None:
        for b, e in enumerate(exclude):
            if e is not None and len(e):
                rows.append(np.full(len(e), b))
                cols.append(np.asarray(e, dtype=np.int64))
    if rows:
        r = torch.from_numpy(np.concatenate(rows))
        c = torch.from_numpy(np.concatenate(cols))
        keep = (c >= 0) & (c < n_columns)
        mask[r[keep], c[keep]] = True
    return mask


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row with a deterministic tie-break (lower item id first).

    Masked entries must be ``-inf``; they are returned only if fewer than k
    finite scores exist, and callers drop them (id ``0``).
    """
    k = min(k, scores.shape[1])
    vals, idx = torch.topk(scores, k, dim=1)
    # topk is not stable: if ties straddle the boundary or sit inside the list,
    # redo those rows with a stable sort so results never depend on the kernel.
    kth = vals[:, -1:]
    n_ge = (scores >= kth).sum(dim=1)
    tied = (n_ge > k) | (vals[:, :-1] == vals[:, 1:]).any(dim=1) if k > 1 else (n_ge > k)
    if tied.any():
        rows = tied.nonzero().squeeze(1)
        s_vals, s_idx = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        vals[rows] = s_vals[:, :k]
        idx[rows] = s_idx[:, :k]
    idx = torch.where(torch.isfinite(vals), idx, torch.zeros_like(idx))
    return idx, vals


class Recommender:
    """Base class; subclasses implement ``_fit``, ``score`` and tensor state."""

    model_name: ClassVar[str] = "base"
    #: whether the model uses the order of a history (sequential) or only its set
    sequential: ClassVar[bool] = False
    #: whether ``fit`` can start from another fitted model's weights (``warm_start_from``)
    supports_warm_start: ClassVar[bool] = False

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
        """Scores for every item: float32 tensor ``(B, n_items + 1)``, column 0 = ``-inf``."""
        raise NotImplementedError

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
        (path / "config.json").write_text(json.dumps(config, indent=2, default=_json_default))
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
        model = model_cls(**config["params"])
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


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
