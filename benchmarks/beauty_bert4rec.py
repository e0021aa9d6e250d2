"""Amazon Beauty benchmark for BERT4Rec.

Protocol (never looks at test targets):
  1. fit on ``split.train`` with early stopping on ``split.valid`` (NDCG@10, full ranking);
  2. refit on ``split.train_full`` (train + validation items) for the best epoch count
     (:func:`attnrec.pipeline.fit_for_test`);
  3. evaluate on ``split.test``: HR/NDCG@5/10/20, full ranking, history items excluded.
``--protocol train-only`` skips step 2 and tests the early-stopped model.

    .venv/bin/python benchmarks/beauty_bert4rec.py                          # defaults
    .venv/bin/python benchmarks/beauty_bert4rec.py -p mask_prob=0.4 -p d_model=128
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnrec.benchmarking import load_split
from attnrec.evaluation import evaluate, validation_metric
from attnrec.models.bert4rec import BERT4Rec
from attnrec.pipeline import fit_for_test, parse_value

log = logging.getLogger("beauty_bert4rec")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="beauty", help="a shared dataset name or an interaction file")
    ap.add_argument("-p", "--param", action="append", default=[], help="hyperparameter key=value (repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--protocol", choices=["refit", "train-only"], default="refit")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    params = {"num_threads": args.threads}
    for pair in args.param:
        k, v = pair.split("=", 1)
        params[k] = parse_value(v)
    model = BERT4Rec().set_params(**params)

    t_all = time.perf_counter()
    data, split = load_split(args.data)  # the library loader: ids as in the file
    t0 = time.perf_counter()
    if args.protocol == "refit":
        fit_for_test(model, split)
        sel = model.validation_
    else:
        model.fit(split.train, split.valid, validation_metric())
        sel = {"best_epoch": model.best_epoch_, "best_metric": model.best_metric_, "history": model.history_}
    t_train = time.perf_counter() - t0
    res = evaluate(model, split.test, ks=(5, 10, 20))
    sel_secs = [h["seconds"] for h in sel["history"]]
    out = {
        "command": "python benchmarks/beauty_bert4rec.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "params": {k: v for k, v in model.get_params().items() if k not in ("progress", "checkpoint_dir", "resume")},
        "protocol": args.protocol,
        "test": {k: res.metrics[k] for k in ["HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20"]},
        "valid_ndcg10_selection": sel["best_metric"],
        "best_epoch": sel["best_epoch"],
        "epochs_selection": len(sel["history"]),
        "epochs_final": model.epochs_run_,
        "seconds_per_epoch_selection": float(np.median(sel_secs)),
        "seconds_per_epoch_final": float(np.median([h["seconds"] for h in model.history_])),
        "eval_seconds_median": float(np.median([h["eval_seconds"] for h in sel["history"] if "eval_seconds" in h] or [0.0])),
        "training_wall_seconds": t_train,
        "total_wall_seconds": time.perf_counter() - t_all,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "history_selection": sel["history"],
    }
    t = out["test"]
    print("\n=== BERT4Rec, Beauty, leave-one-out, full ranking, history excluded (test) ===")
    print("  ".join(f"{k} {v:.4f}" for k, v in t.items()))
    print(f"best epoch {out['best_epoch']} (valid NDCG@10 {out['valid_ndcg10_selection']:.4f}); "
          f"selection {out['epochs_selection']} epochs, final {out['epochs_final']} epochs; "
          f"{out['seconds_per_epoch_final']:.1f} s/epoch (final), training wall {t_train:.0f}s, "
          f"total {out['total_wall_seconds']:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
