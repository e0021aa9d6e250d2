"""Ranking-stage benchmark: first stage alone vs first stage + DIN target-attention reranker.

    python benchmarks/two_stage.py --data ml-100k --split loo --first ease
    python benchmarks/two_stage.py --data ml-100k --split temporal --first ease
    python benchmarks/two_stage.py --data synthetic --split loo --first ease
    python benchmarks/two_stage.py --data beauty --split loo --first ease

Both are evaluated on the same split by full ranking (history excluded); the
two-stage model is fitted with ``fit_for_test`` (ranker epochs and the blend
weight chosen on validation, then refitted on train+valid). Latency is the
wall time of ``score`` per request (batch of 1, median over ``--latency-n``
requests) for the first stage alone and the whole pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import attnrec.models.din  # noqa: F401  (registers two-stage)
from attnrec import benchmarking
from attnrec.evaluation import evaluate
from attnrec.pipeline import build_model, fit_for_test, make_split

log = logging.getLogger("two_stage")


def load(name: str, seed: int):
    if name == "ml-100k":
        return benchmarking.load(name), {"item_features": str(benchmarking.side_file(name, ".item")),
                                         "feature_kinds": {"movie_title": "drop"},
                                         "user_features": str(benchmarking.side_file(name, ".user")),
                                         "user_feature_kinds": {"age": "numeric", "zip_code": "drop"}}
    if name == "beauty":
        return benchmarking.load(name), {}  # ids only
    if name == "synthetic":
        from attnrec.data.synthetic import generate

        return generate(n_users=2000, n_items=400, seed=seed).to_sequences(), {}
    raise SystemExit(f"unknown --data {name}")


def latency(model, histories, users, n: int) -> float:
    times = []
    for i in range(min(n, len(histories))):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.score([histories[i]], users[i:i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k", choices=["ml-100k", "synthetic", "beauty"])
    ap.add_argument("--split", default="loo", choices=["loo", "temporal"])
    ap.add_argument("--first", default="ease")
    ap.add_argument("--first-params", default="{}", help='JSON, e.g. \'{"l2": 200}\'')
    ap.add_argument("--ranker-params", default="{}", help="JSON overrides for TwoStage")
    ap.add_argument("--no-features", action="store_true", help="ranker with id features only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    data, features = load(args.data, args.seed)
    if args.no_features:
        features = {}
    split = make_split(data, args.split)
    first_params = json.loads(args.first_params)
    ks = (10, 20)

    first = build_model(args.first, first_params)
    t0 = time.perf_counter()
    fit_for_test(first, split)
    r_first = evaluate(first, split.test, ks=ks)
    fit_first = time.perf_counter() - t0

    params = {"first_stage": args.first, "first_stage_params": first_params, "seed": args.seed,
              **features, **json.loads(args.ranker_params)}
    two = build_model("two-stage", params)
    t0 = time.perf_counter()
    fit_for_test(two, split)
    fit_two = time.perf_counter() - t0
    r_two = evaluate(two, split.test, ks=ks)

    hist = split.test.histories()
    users = split.test.users
    lat_first = latency(first, hist, users, args.latency_n)
    lat_two = latency(two, hist, users, args.latency_n)
    keys = ("HR@10", "NDCG@10", "NDCG@20")
    summary = {
        "data": args.data, "split": args.split, "protocol": split.protocol,
        "n_test_cases": len(split.test), "first_stage": args.first, "first_params": first_params,
        "two_stage_params": {k: v for k, v in two.get_params().items() if k != "first_stage_params"},
        "first": {k: r_first.metrics[k] for k in keys},
        "two_stage": {k: r_two.metrics[k] for k in keys},
        "blend_chosen": two.blend_, "blend_valid_ndcg": getattr(two, "blend_scores_", None),
        "ranker_best_epoch": two.validation_.get("best_epoch") if two.validation_ else None,
        "fit_seconds": {"first": round(fit_first, 1), "two_stage": round(fit_two, 1)},
        "latency_ms_per_request": {"first": round(lat_first, 2), "two_stage": round(lat_two, 2),
                                   "added": round(lat_two - lat_first, 2)},
    }
    if summary["blend_valid_ndcg"]:
        summary["blend_valid_ndcg"] = {str(k): round(v, 4) for k, v in summary["blend_valid_ndcg"].items()}
    print(json.dumps(summary, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
