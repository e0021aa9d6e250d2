"""End-to-end workflows behind the CLI: load -> split -> fit -> evaluate -> recommend.

The CLI only parses arguments and calls these functions, so everything here is
usable (and tested) from Python too.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from attnrec.data.dataset import SequenceData, Split
from attnrec.data.io import ColumnMap
from attnrec.data.preprocess import PreprocessConfig, PreprocessReport, load_dataset
from attnrec.evaluation import DEFAULT_KS, EvalResult, evaluate
from attnrec.models.base import Recommender, get_model_class

log = logging.getLogger(__name__)

@dataclass
class DataSpec:
    """Where the interactions are and how to clean them."""

    path: Path
    format: str = "auto"
    columns: ColumnMap | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def load(self) -> tuple[SequenceData, PreprocessReport]:
        return load_dataset(self.path, self.columns, format=self.format, config=self.preprocess)


def parse_value(text: str) -> Any:
    """``"50"`` -> 50, ``"true"`` -> True, ``"[1,2]"`` -> [1, 2], anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kv(pair: str) -> tuple[str, Any]:
    """``"epochs=5"`` -> ``("epochs", 5)``."""
    if "=" not in pair:
        raise ValueError(f"--param expects key=value, got {pair!r}")
    key, value = pair.split("=", 1)
    return key, parse_value(value)


def parse_params(pairs: Iterable[str], models: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parse ``key=value`` / ``model.key=value`` options into per-model dicts.

    A bare ``key=value`` applies to every model in ``models`` that has that
    hyperparameter (and must fit at least one).
    """
    out: dict[str, dict[str, Any]] = {m: {} for m in (models or [])}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--param expects key=value or model.key=value, got {pair!r}")
        key, val = parse_kv(pair)
        if "." in key:
            model, key = key.split(".", 1)
            out.setdefault(model, {})[key] = val
            continue
        targets = [m for m in out if key in get_model_class(m)().get_params()]
        if not targets:
            raise ValueError(f"no selected model has a hyperparameter {key!r}")
        for m in targets:
            out[m][key] = val
    return out


def build_model(name: str, params: dict[str, Any] | None = None, progress: bool = False) -> Recommender:
    """A model by registry name; ``progress`` turns on training progress bars where the model has them."""
    model = get_model_class(name)()
    params = dict(params or {})
    if progress and "progress" in model.get_params():
        params.setdefault("progress", True)
    return model.set_params(**params)


def make_split(data: SequenceData, protocol: str = "loo", **kw: Any) -> Split:
    """``loo`` (leave-one-out) or ``temporal`` (global time cut-off)."""
    from attnrec.data.splits import leave_one_out, temporal_split

    if protocol in ("loo", "leave-one-out"):
        return leave_one_out(data, **kw)
    if protocol == "temporal":
        return temporal_split(data, **kw)
    raise ValueError(f"unknown split {protocol!r}; use 'loo' or 'temporal'")


def fit_for_test(model: Recommender, split: Split) -> Recommender:
    """Fit so that ``split.test`` can be evaluated without leakage.

    Models with validation-driven training (early stopping) expose
    ``refit_params()``: they are first fitted on ``split.train`` with
    ``split.valid`` choosing the stopping epoch, then refitted from scratch on
    ``split.train_full`` (train + validation interactions) with the chosen
    settings. The validation run's history is kept in ``model.validation_``.
    Other models are fitted on ``split.train_full`` directly. Test targets are
    never seen either way.
    """
    if callable(getattr(model, "refit_params", None)) and len(split.valid):
        model.fit(split.train, valid=split.valid)
        validation = {
            "best_epoch": getattr(model, "best_epoch_", None),
            "best_metric": getattr(model, "best_metric_", None),
            "history": getattr(model, "history_", []),
        }
        model.set_params(**model.refit_params())
        model.fit(split.train_full)
        model.validation_ = validation
        return model
    return model.fit(split.train_full)


@dataclass
class ModelRun:
    name: str
    model: Recommender
    result: EvalResult
    fit_seconds: float
    eval_seconds: float


def evaluate_models(
    models: dict[str, Recommender],
    split: Split,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    sampled_negatives: int | None = None,
    on_done=None,
    progress: bool = False,
    per_case: bool = False,
) -> list[ModelRun]:
    """Fit each model for the test stage and evaluate it on ``split.test``."""
    runs = []
    for name, model in models.items():
        log.info("fitting %s", name)
        t0 = time.perf_counter()
        fit_for_test(model, split)
        t1 = time.perf_counter()
        result = evaluate(
            model, split.test, ks=ks, exclude_history=exclude_history, sampled_negatives=sampled_negatives,
            progress=progress, per_case=per_case,
        )
        t2 = time.perf_counter()
        run = ModelRun(name, model, result, t1 - t0, t2 - t1)
        runs.append(run)
        if on_done is not None:
            on_done(run)
    return runs


def check_bundle_matches(model: Recommender, split: Split) -> None:
    """Refuse to evaluate a bundle on a split it was not trained for (leakage or id mismatch)."""
    fit = model.train_data_
    want = split.train_full
    if fit.item_map != want.item_map or fit.user_map != want.user_map:
        raise ValueError("the bundle's id maps differ from this data file's; was it trained on the same file and options?")
    if fit.n_interactions != want.n_interactions or not np.array_equal(fit.items, want.items):
        raise ValueError(
            "the bundle was not fitted on this split's training data (train with `--holdout last` and the same --split)"
        )


def save_bundle(
    model: Recommender,
    out: Path,
    metrics: dict | None = None,
    info: dict | None = None,
    items_file: Path | None = None,
) -> Path:
    """Save ``model`` and, when given, a copy of the item catalogue (``items.csv``)."""
    model.save(out, metrics=metrics, info=info)
    if items_file is not None:
        shutil.copyfile(items_file, out / "items.csv")
    return out


def read_catalogue(bundle_or_file: Path) -> dict[str, dict[str, str]]:
    """``{raw item id: row}`` from a bundle's ``items.csv`` (empty if there is none)."""
    path = bundle_or_file / "items.csv" if bundle_or_file.is_dir() else bundle_or_file
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["item_id"]: row for row in csv.DictReader(f)}


@dataclass
class Recommendation:
    user: str
    item: str
    rank: int
    score: float


def recommend_for_users(
    model: Recommender,
    users: Sequence[str] | None = None,
    k: int = 10,
    exclude_history: bool = True,
    batch_size: int = 512,
    index: str | None = None,
) -> list[Recommendation]:
    """Top-``k`` for raw user ids (all users the model knows when ``users`` is None).

    Histories are the model's fit-time sequences, so for a bundle trained with
    the last item held out this is exactly the test-stage ranking. ``index``
    (``auto``/``exact``/``hnsw``/``ivf``) answers vector models from a FAISS
    index (:mod:`attnrec.retrieval`); ``None``, models without vectors and
    ``auto`` on catalogues small enough for exact search score every item.
    """
    model._check_fitted()
    umap, imap = model.user_map_, model.item_map_
    if users is None:
        dense = np.arange(len(umap))
    else:
        unknown = [u for u in users if u not in umap]
        if unknown:
            raise KeyError(f"{len(unknown)} unknown user id(s), e.g. {unknown[:5]}")
        dense = np.array([umap.to_dense(u) for u in users], dtype=np.int64)
    histories = [model.user_history(int(u)) for u in dense]
    item_index = None
    if index is not None:
        from attnrec import retrieval

        kind = retrieval.choose_kind(model.n_items_, index)
        if retrieval.supports_vectors(model) and not (index == "auto" and kind == "exact"):
            item_index = retrieval.build_index(model, kind)
    if item_index is not None:
        from attnrec.retrieval import recommend as retrieve

        ids, scores = retrieve(model, histories, k=k, exclude_history=exclude_history, users=dense,
                               index=item_index, batch_size=batch_size)
    else:
        ids, scores = model.recommend(histories, k=k, exclude_history=exclude_history, users=dense, batch_size=batch_size)
    out = []
    for row, u in enumerate(dense):
        raw_user = umap.to_raw(int(u))
        rank = 0
        for item, score in zip(ids[row], scores[row]):
            if item == 0:
                continue  # fewer than k candidates left
            rank += 1
            out.append(Recommendation(raw_user, imap.to_raw(int(item)), rank, float(score)))
    return out


def write_recommendations(recs: Iterable[Recommendation], path: Path) -> int:
    """CSV with header ``user,item,rank,score`` (raw ids, rank from 1)."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "rank", "score"])
        for r in recs:
            w.writerow([r.user, r.item, r.rank, f"{r.score:.6g}"])
            n += 1
    return n


def results_to_json(runs: Sequence[ModelRun], protocol: str) -> dict:
    return {
        "protocol": protocol,
        "models": {
            r.name: {
                "metrics": r.result.metrics,
                "n_cases": r.result.n_cases,
                "fit_seconds": r.fit_seconds,
                "eval_seconds": r.eval_seconds,
                "params": r.model.get_params(),
            }
            for r in runs
        },
    }
