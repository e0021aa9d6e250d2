"""attnrec: recommendation by attention allocation.

The public API, importable from here (loaded lazily, so ``import attnrec`` is cheap)::

    from attnrec import load_dataset, leave_one_out, SASRec, EASE, evaluate, validation_metric, Recommender
    data, report = load_dataset("events.csv")
    split = leave_one_out(data)
    model = SASRec().fit(split.train, valid=split.valid, metric=validation_metric())
    print(evaluate(model, split.test).metrics)
    model.save("bundles/sasrec"); Recommender.load("bundles/sasrec")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # data
    "load_dataset": "attnrec.data.preprocess",
    "build_sequences": "attnrec.data.preprocess",
    "PreprocessConfig": "attnrec.data.preprocess",
    "read_log": "attnrec.data.readers",
    "ColumnMap": "attnrec.data.columns",
    "DataError": "attnrec.data.errors",
    "IdMap": "attnrec.data.dataset",
    "SequenceData": "attnrec.data.dataset",
    "EvalSet": "attnrec.data.dataset",
    "Split": "attnrec.data.dataset",
    "leave_one_out": "attnrec.data.splits",
    "temporal_split": "attnrec.data.splits",
    "generate_synthetic": "attnrec.data.synthetic",
    # models
    "Recommender": "attnrec.models.base",
    "available_models": "attnrec.models.base",
    "MostPopular": "attnrec.models.baselines",
    "ItemKNN": "attnrec.models.baselines",
    "EASE": "attnrec.models.baselines",
    "SASRec": "attnrec.models.sasrec",
    "BERT4Rec": "attnrec.models.bert4rec",
    # evaluation and explanations
    "evaluate": "attnrec.evaluation",
    "validation_metric": "attnrec.evaluation",
    "explain": "attnrec.explain",
}
_RENAMED = {"generate_synthetic": "generate"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attnrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
