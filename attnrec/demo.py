"""The built-in demo: synthetic shop -> split -> baselines and attention models -> explained recommendations."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attnrec.data.catalogue import read_catalogue
from attnrec.data.preprocess import load_dataset
from attnrec.data.synthetic import generate
from attnrec.evaluation import evaluate
from attnrec.explain import explain
from attnrec.models.base import available_models
from attnrec.pipeline import (
    DEFAULT_PROTOCOL,
    ModelRun,
    build_model,
    bundle_metrics,
    evaluate_models,
    make_split,
    protocol_line,
    save_bundle,
)

log = logging.getLogger(__name__)

# Quick settings: the demo should finish in a few minutes on 2 cores.
DEMO_MODELS: dict[str, dict] = {
    "pop": {},
    "itemknn": {},
    "ease": {"l2": 100.0},
    "sasrec": {"epochs": 20},
}


@dataclass
class UserExample:
    user: str
    history: list[tuple[str, str]]  # (item id, name), oldest first
    recommendations: list[tuple[str, str, float]]  # (item id, name, score)
    because: list[tuple[str, str, float]] = field(default_factory=list)  # for the top item
    planted_next: str | None = None  # the accessory the planted rule expects, if any


@dataclass
class DemoReport:
    runs: list[ModelRun]
    protocol: str
    best: str  # the model with the best validation NDCG@10 (test data chooses nothing)
    validation_ndcg: dict[str, float]  # NDCG@10 on the validation targets, per model
    bundle: Path
    examples: list[UserExample]
    data_dir: Path
    rule_hit_rate: float  # share of users whose last item has a rule and whose top-10 holds its accessory


def run_demo(out_dir: Path, n_users: int = 2000, seed: int = 0, n_examples: int = 3) -> DemoReport:
    out_dir = Path(out_dir)
    synth = generate(n_users=n_users, seed=seed)
    data_dir = synth.write(out_dir / "data")
    data, _ = load_dataset(data_dir / "interactions.csv")
    split = make_split(data, "loo")
    known = set(available_models())
    models = {n: build_model(n, p) for n, p in DEMO_MODELS.items() if n in known}
    runs = evaluate_models(models, split, protocol=DEFAULT_PROTOCOL)
    validation = {r.name: validation_ndcg(r, split) for r in runs}
    best = max(runs, key=lambda r: validation[r.name])
    catalogue = read_catalogue(data_dir / "items.csv")
    bundle = save_bundle(
        best.model,
        out_dir / "bundle",
        metrics=bundle_metrics(best.model, DEFAULT_PROTOCOL, split, best.result),
        info={"dataset": "attnrec synthetic shop", "protocol": DEFAULT_PROTOCOL, "split": split.describe()},
        catalogue=catalogue,
    )
    examples, hit_rate = _examples(best.model, synth.rules, catalogue, n_examples)
    return DemoReport(runs, protocol_line(DEFAULT_PROTOCOL, runs, split), best.name, validation, bundle, examples,
                      data_dir, hit_rate)


def validation_ndcg(run: ModelRun, split) -> float:
    """NDCG@10 on the validation targets: the demo's model choice.

    A model with a selection stage kept the figures of its run on ``split.train``;
    one without was fitted on train + validation for the test, so a copy with the
    demo's settings is fitted on ``split.train`` alone and scored on validation.
    """
    if run.model.validation_ is not None:
        return float(run.model.validation_["metrics"]["NDCG@10"])
    probe = build_model(run.name, DEMO_MODELS[run.name]).fit(split.train)
    return float(evaluate(probe, split.valid, ks=(10,)).metrics["NDCG@10"])


def _examples(model, rules: dict[str, str], catalogue: dict, n_examples: int):
    umap, imap = model.user_map_, model.item_map_

    def name(i: str) -> str:
        entry = catalogue.get(i)
        return entry.name if entry is not None and entry.name else i

    # users whose latest item triggers a planted rule: the interesting cases
    users = np.arange(len(umap))
    histories = [model.user_history(int(u)) for u in users]
    last_raw = [imap.to_raw(int(h[-1])) if len(h) else None for h in histories]
    triggered = [u for u in users if last_raw[u] in rules]
    ids, scores = model.recommend(histories, k=10)
    hits = [rules[last_raw[u]] in {imap.to_raw(int(i)) for i in ids[u] if i} for u in triggered]
    hit_rate = float(np.mean(hits)) if hits else float("nan")
    examples = []
    for u in triggered[:n_examples]:
        h = histories[u]
        recs = [(imap.to_raw(int(i)), name(imap.to_raw(int(i))), float(s)) for i, s in zip(ids[u][:5], scores[u][:5]) if i]
        because = []
        if recs:
            try:
                top = imap.to_dense(recs[0][0])
                for _, item, w in sorted(explain(model, h, top), key=lambda t: -t[2])[:3]:
                    because.append((imap.to_raw(int(item)), name(imap.to_raw(int(item))), float(w)))
            except (NotImplementedError, TypeError, AttributeError) as e:  # model without attention
                log.info("no attention explanation for %s: %s", type(model).__name__, e)
        examples.append(
            UserExample(
                umap.to_raw(int(u)),
                [(imap.to_raw(int(i)), name(imap.to_raw(int(i)))) for i in h[-5:]],
                recs,
                because,
                rules.get(last_raw[u]),
            )
        )
    return examples, hit_rate
