"""End-to-end workflows behind the CLI: load -> split -> fit -> evaluate -> recommend.

The CLI only parses arguments and calls these functions, so everything here is
usable (and tested) from Python too.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from attnrec import retrieval
from attnrec.data.catalogue import Catalogue, read_catalogue, write_catalogue
from attnrec.data.dataset import SequenceData, Split
from attnrec.data.errors import DataError
from attnrec.data.columns import ColumnMap
from attnrec.data.preprocess import PreprocessConfig, PreprocessReport, load_dataset
from attnrec.evaluation import DEFAULT_KS, EvalResult, evaluate, validation_metric
from attnrec.models.base import Capability, Recommender, get_model_class

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


#: hyperparameters that name an input file (side information read during fit)
FILE_PARAMS = ("item_features", "user_features")


def check_inputs(params: dict[str, dict[str, Any]], items: Path | None = None) -> Catalogue | None:
    """Read every input file named in ``params`` and ``items`` before any training starts.

    Feature files given as ``item_features=`` / ``user_features=`` are read
    strictly (:func:`attnrec.data.features.check_feature_file`); the item
    catalogue is read and returned. A bad file raises a located
    :class:`~attnrec.data.errors.DataError` in seconds, not after the models trained.
    """
    from attnrec.data.features import check_feature_file

    for model, p in params.items():
        for key in FILE_PARAMS:
            if isinstance(p.get(key), (str, Path)):
                try:
                    check_feature_file(p[key])
                except DataError as e:
                    raise DataError(f"{model}.{key}: {e.message}", e.path, e.line, e.column, e.row) from None
    return read_catalogue(items) if items is not None else None


def check_outputs(directories: Sequence[Path] = (), files: Sequence[Path] = ()) -> None:
    """Make sure results can be written before anything trains (creates the directories)."""
    for d in directories:
        if d.exists() and not d.is_dir():
            raise ValueError(f"{d} exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the output directory {d}: {e.strerror}") from None
    for f in files:
        if f.is_dir():
            raise ValueError(f"{f} is a directory, not a file to write")
        if not f.parent.is_dir():
            raise ValueError(f"cannot write {f}: the directory {f.parent} does not exist")


def make_split(data: SequenceData, protocol: str = "loo", **kw: Any) -> Split:
    """``loo`` (leave-one-out) or ``temporal`` (global time cut-off)."""
    from attnrec.data.splits import leave_one_out, temporal_split

    if protocol in ("loo", "leave-one-out"):
        return leave_one_out(data, **kw)
    if protocol == "temporal":
        return temporal_split(data, **kw)
    raise ValueError(f"unknown split {protocol!r}; use 'loo' or 'temporal'")


# ---- protocols -------------------------------------------------------------------------------
PROTOCOLS = {
    "paper": "select on validation, test that same model (no refit)",
    "refit": "select on validation, refit on train+validation for the chosen epochs, then test",
}
#: ``refit`` for users: the deployed model has seen every interaction before the test item.
DEFAULT_PROTOCOL = "refit"
NO_SELECTION = "fitted on train+validation (no selection stage)"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    return protocol


def describe_protocol(protocol: str) -> str:
    """``"paper: select on validation, ..."``: the name first, as every output shows it."""
    return f"{check_protocol(protocol)}: {PROTOCOLS[protocol]}"


def fit_for_test(model: Recommender, split: Split, protocol: str = DEFAULT_PROTOCOL) -> Recommender:
    """Fit so that ``split.test`` can be evaluated without leakage, under ``protocol``.

    Models that declare ``REFIT`` (validation-driven training, early stopping)
    are first fitted on ``split.train`` with
    ``split.valid`` choosing the stopping epoch. Under ``refit`` they are then
    refitted from scratch on ``split.train_full`` (train + validation
    interactions) with the chosen settings; under ``paper`` the selected model is
    the one tested, and it recommends from the test-stage histories. The
    selection run is kept in ``model.validation_`` (see :func:`selection_record`;
    ``None`` for a model without one).
    Models without a selection stage are fitted on ``split.train_full`` under
    both protocols. Test targets are never seen either way.
    """
    check_protocol(protocol)
    # a differentially private model trains once, for its planned epochs: selecting on
    # validation would spend privacy budget the accountant does not count
    if model.supports(Capability.REFIT) and len(split.valid) and model.selects_on_validation():
        model.fit(split.train, valid=split.valid, metric=validation_metric())
        validation = selection_record(model, split)
        if protocol == "refit":
            model.set_params(**model.refit_params())
            model.fit(split.train_full)
        else:
            use_histories(model, split.train_full)
        model.validation_ = validation
        return model
    model.fit(split.train_full)
    model.validation_ = None  # no selection stage
    return model


def selection_record(model: Recommender, split: Split, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """The selection run of a model just fitted on ``split.train``: epochs, curve, validation metrics."""
    return {
        **model.training_summary(),
        "metrics": evaluate(model, split.valid, ks=ks).metrics,
        "n_cases": len(split.valid),
    }


def use_histories(model: Recommender, data: SequenceData) -> None:
    """Make ``data`` the histories ``model`` recommends from (and saves in its bundle).

    A ``paper`` model is fitted on ``split.train`` but tested on histories that end
    just before each user's test item (``split.train_full``); a bundle recommends
    for that stage, like a ``refit`` bundle does. Same users and ids, more history.
    """
    fit = model.train_data_
    if fit.item_map != data.item_map or fit.user_map != data.user_map:
        raise ValueError("histories with different id maps than the model's")
    model.train_data_ = data


def fitted_on(model: Recommender, protocol: str) -> str:
    """What a model :func:`fit_for_test` fitted under ``protocol`` was trained on, in words."""
    if model.validation_ is None:
        return NO_SELECTION
    if protocol == "refit":
        return "selected on validation, refitted on train+validation"
    return "fitted on train, selected on validation, tested without refit"


def check_holdout(holdout: str) -> str:
    if holdout not in ("last", "none"):
        raise ValueError(f"--holdout must be 'last' or 'none', got {holdout!r}")
    return holdout


def fit_bundle(model: Recommender, data: SequenceData, holdout: str = "last", split: str = "loo",
               protocol: str = DEFAULT_PROTOCOL) -> tuple[dict, Split | None]:
    """Fit ``model`` as ``attnrec train`` does: ``(bundle info, split)``.

    ``holdout="last"`` splits ``data`` and fits for the test stage under
    ``protocol``; ``holdout="none"`` fits on everything (no split, ``None``).
    """
    if check_holdout(holdout) == "none":
        model.fit(data)
        return {"holdout": "none", "protocol": "none"}, None
    s = make_split(data, split)
    fit_for_test(model, s, protocol)
    info = {"holdout": "last", "protocol": protocol, "protocol_description": describe_protocol(protocol),
            "split": s.describe()}
    if model.validation_ is not None:
        info["validation"] = model.validation_
    return info, s


def bundle_metrics(model: Recommender, protocol: str, split: Split | None,
                   test: EvalResult | None = None) -> dict:
    """What ``metrics.json`` holds: the protocol, validation figures and test figures.

    The test stage is evaluated here (full ranking, default cut-offs) unless
    ``test`` already holds its result; ``split=None`` (trained on everything) has none.
    """
    if split is None:
        return {"protocol": "none", "protocol_description": "trained on every interaction (--holdout none)",
                "validation": None, "test": None}
    validation = model.validation_
    out = {
        "protocol": protocol,
        "protocol_description": describe_protocol(protocol),
        "fitted_on": fitted_on(model, protocol),
        "split": split.describe(),
        "validation": None if validation is None else {
            "metrics": validation["metrics"], "n_cases": validation["n_cases"],
            "best_epoch": validation["best_epoch"], "best_metric": validation["best_metric"],
        },
        "test": None,
    }
    test = test if test is not None else evaluate(model, split.test)
    out["test"] = {"metrics": test.metrics, "n_cases": test.n_cases, "ranking": test.protocol}
    return out


@dataclass
class ModelRun:
    name: str
    model: Recommender
    result: EvalResult
    fit_seconds: float
    eval_seconds: float
    protocol: str = DEFAULT_PROTOCOL
    fitted_on: str = NO_SELECTION


def evaluate_models(
    models: dict[str, Recommender],
    split: Split,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
    sampled_negatives: int | None = None,
    on_done=None,
    progress: bool = False,
    per_case: bool = False,
    protocol: str = DEFAULT_PROTOCOL,
) -> list[ModelRun]:
    """Fit each model for the test stage under ``protocol`` and evaluate it on ``split.test``."""
    check_protocol(protocol)
    runs = []
    for name, model in models.items():
        log.info("fitting %s (%s protocol)", name, protocol)
        t0 = time.perf_counter()
        fit_for_test(model, split, protocol)
        t1 = time.perf_counter()
        result = evaluate(
            model, split.test, ks=ks, exclude_history=exclude_history, sampled_negatives=sampled_negatives,
            progress=progress, per_case=per_case,
        )
        t2 = time.perf_counter()
        run = ModelRun(name, model, result, t1 - t0, t2 - t1, protocol, fitted_on(model, protocol))
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
    catalogue: Catalogue | None = None,
) -> Path:
    """Save ``model`` and, when given, its item catalogue as ``items.csv``."""
    model.save(out, metrics=metrics, info=info)
    if catalogue:
        write_catalogue(catalogue, Path(out) / "items.csv")
    return out


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
    kind = retrieval.index_kind(model, index)
    if kind is not None:
        ids, scores = retrieval.recommend(model, histories, k=k, exclude_history=exclude_history, users=dense,
                                          index=retrieval.build_index(model, kind), batch_size=batch_size)
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


def protocol_line(protocol: str, runs: Sequence[ModelRun], split: Split) -> str:
    """The protocol as printed above every table: training protocol, then split and ranking."""
    ranking = runs[0].result.protocol if runs else split.describe()
    return f"{describe_protocol(protocol)}; {ranking}"


def results_to_json(runs: Sequence[ModelRun], protocol: str, split: Split) -> dict:
    """Every run's figures, each named with the protocol that produced it."""
    return {
        "protocol": protocol_line(protocol, runs, split),
        "protocol_name": protocol,
        "split": split.describe(),
        "models": {
            r.name: {
                "protocol": r.protocol,
                "fitted_on": r.fitted_on,
                "ranking": r.result.protocol,
                "metrics": r.result.metrics,
                "n_cases": r.result.n_cases,
                "fit_seconds": r.fit_seconds,
                "eval_seconds": r.eval_seconds,
                "params": r.model.get_params(),
            }
            for r in runs
        },
    }
