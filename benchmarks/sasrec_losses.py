"""SASRec's losses compared epoch by epoch on one split: validation NDCG@10 per epoch.

    python benchmarks/sasrec_losses.py --threads 1                       # synthetic shop
    python benchmarks/sasrec_losses.py --data ml-100k --epochs 10 --threads 1

Every loss trains the same network (same seed, same batches) for ``--epochs``
epochs without early stopping; each epoch is evaluated on the validation split
(leave-one-out, full ranking, history excluded). ``gbce t=0`` is plain BCE with
the same negatives: it separates the effect of gBCE's ``beta`` from that of
many uniform negatives per position.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from attnrec import benchmarking
from attnrec.data.splits import leave_one_out
from attnrec.data.synthetic import generate
from attnrec.evaluation import validation_metric
from attnrec.models.sasrec import SASRec
VARIANTS = {
    "ce": dict(loss="ce"),
    "bce (1 negative)": dict(loss="bce"),
    "gbce t=0.75": dict(loss="gbce", gbce_t=0.75),
    "gbce t=0 (plain BCE)": dict(loss="gbce", gbce_t=0.0),
    "sampled_softmax": dict(loss="sampled_softmax"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="synthetic, ml-100k, beauty or a file")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n-negatives", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from: " + ", ".join(VARIANTS))
    ap.add_argument("--out", help="write the curves as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data == "synthetic":
        data = generate(seed=0).to_sequences()
    else:
        data = benchmarking.load(args.data)  # a shared dataset name or an interaction file
    split = leave_one_out(data)
    curves = {}
    for name in args.variants.split(","):
        m = SASRec(**VARIANTS[name], n_negatives=args.n_negatives, d_model=args.d_model, epochs=args.epochs,
                   patience=None, num_threads=args.threads)
        m.fit(split.train, split.valid, validation_metric())
        curves[name] = [round(h["NDCG@10"], 4) for h in m.history_]
        secs = sum(h["seconds"] for h in m.history_) / len(m.history_)
        print(f"{name:32s} {secs:6.1f} s/epoch  valid NDCG@10 by epoch: {curves[name]}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "curves": curves}, indent=2))


if __name__ == "__main__":
    main()
