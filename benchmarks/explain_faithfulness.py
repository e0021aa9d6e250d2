"""Faithfulness of explanations, per recommended item: query-level rollout vs the model's own.

    python benchmarks/explain_faithfulness.py --data ml-100k --model sasrec --threads 1
    python benchmarks/explain_faithfulness.py --data synthetic --model sasrec --mixer none --threads 1

The model is fitted on ``split.train_full`` (leave-one-out, fixed epochs, no
selection) and explained on the test histories. For each of the top ``k``
recommended items of up to ``--n`` histories, :func:`attnrec.explain.faithfulness`
removes the history item the explanation weights most and a random other one and
counts how often the first removal lowers that item's score more. Methods:
``rollout`` (what every recommended item got before explanations were per item:
the rollout row of the scoring position), ``model`` (the model's declared
explanation: rollout share x the item's score gain), ``last`` (last layer only)
and ``occlusion`` (the score drop itself: the ceiling, at one extra forward per
history item). Also prints the median time to explain one request's 10 items.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from attnrec import benchmarking
from attnrec.data.splits import leave_one_out
from attnrec.explain import explanations, faithfulness
from attnrec.pipeline import build_model

log = logging.getLogger("explain_faithfulness")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="ml-100k", help="ml-100k, beauty or synthetic")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--mixer", default=None, help="SASRec mixer (default: the model's default)")
    ap.add_argument("--n", type=int, default=500, help="test histories explained")
    ap.add_argument("--ks", default="1,10", help="top-k recommended items explained per history")
    ap.add_argument("--methods", default="rollout,model,last,occlusion")
    ap.add_argument("--latency-n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        from attnrec.data.synthetic import generate

        data = generate(n_users=1000, n_items=200, seed=7, rule_prob=0.9).to_sequences()
    else:
        data = benchmarking.load(args.data)
    split = leave_one_out(data)
    params = {"epochs": args.epochs, "seed": args.seed, "num_threads": args.threads}
    if args.mixer is not None:
        params["mixer"] = args.mixer
    model = build_model(args.model, params)
    t0 = time.perf_counter()
    model.fit(split.train_full)
    log.info("fitted %s in %.0fs", args.model, time.perf_counter() - t0)
    histories = split.test.histories()
    out = {"data": args.data, "model": args.model, "params": model.get_params(), "n_histories": args.n,
           "results": {}}
    for method in args.methods.split(","):
        for k in (int(x) for x in args.ks.split(",")):
            t0 = time.perf_counter()
            r = faithfulness(model, histories, n=args.n, method=None if method == "model" else method,
                             seed=args.seed, k=k)
            r["seconds"] = round(time.perf_counter() - t0, 1)
            out["results"][f"{method}@k={k}"] = r
            log.info("%s k=%d: %s", method, k, json.dumps(r))
    # time to explain one request's 10 recommendations (batch of one, as the service does)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(histories), size=min(args.latency_n, len(histories)), replace=False)
    for method in ("rollout", "model"):
        times = []
        for i in picks:
            h = histories[int(i)]
            recs, _ = model.recommend([h], k=10)
            t0 = time.perf_counter()
            explanations(model, [h], [recs[0]], None if method == "model" else method)
            times.append(time.perf_counter() - t0)
        out["results"][f"{method}_ms_per_request"] = round(1000 * float(np.median(times)), 2)
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
