"""Privacy-utility curve: user-level DP-SGD SASRec/BERT4Rec at several epsilons, with popularity.

Protocol ``fixed-epochs`` (the DP design, :mod:`attnrec.privacy`): leave-one-out;
every model is fitted once on ``split.train_full`` (all items before each user's
test item) for a fixed number of epochs chosen in advance, with no validation
peeking (selecting an epoch on validation would spend privacy budget that the
accountant does not count); the test split is then evaluated once, full ranking
over the catalogue, history items excluded. ``epsilon=inf`` is ordinary
non-private training of the same model for the same epochs (all windows, fused
kernel); ``pop`` is the popularity baseline on the same split.

Each (model, epsilon) runs in its own process so that its peak RSS is its own.

    python benchmarks/privacy.py --data ml-100k --model sasrec --epochs 40 --threads 1
    python benchmarks/privacy.py --data beauty --model sasrec --epochs 2 --threads 1
    (--data-dir DIR when the datasets are not in ../shared/data)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from attnrec.benchmarking import DATASETS, REPO, shared_data
from attnrec.pipeline import parse_value

log = logging.getLogger("privacy_bench")


def run_one(data: str, data_dir: Path, model_name: str, epsilon: float, epochs: int, params: dict,
            threads: int) -> dict:
    """Fit one model on train_full for ``epochs`` epochs and evaluate the test split."""
    import torch

    from attnrec.data.preprocess import load_dataset
    from attnrec.data.splits import leave_one_out
    from attnrec.evaluation import evaluate
    from attnrec.pipeline import build_model

    torch.set_num_threads(threads)
    ds = load_dataset(data_dir / DATASETS[data] if data in DATASETS else Path(data))[0]
    split = leave_one_out(ds)
    if model_name == "pop":
        model = build_model("pop", {})
    else:
        p = {"epochs": epochs, "num_threads": threads, "patience": None, **params}
        if math.isfinite(epsilon):
            p["privacy_epsilon"] = epsilon
        model = build_model(model_name, p)
    t0 = time.perf_counter()
    model.fit(split.train_full)  # fixed epochs, no validation
    train_s = time.perf_counter() - t0
    res = evaluate(model, split.test, ks=(10,))
    return {
        "data": data, "model": model_name, "epsilon": epsilon, "protocol": "fixed-epochs",
        "epochs": epochs if model_name != "pop" else None,
        "NDCG@10": res.metrics["NDCG@10"], "HR@10": res.metrics["HR@10"],
        "train_seconds": train_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "privacy": getattr(model, "privacy_", None),
        "params": {k: v for k, v in model.get_params().items()
                   if k not in ("progress", "checkpoint_dir", "resume")},
    }


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k", help="ml-100k, beauty or a path")
    ap.add_argument("--data-dir", type=Path, default=shared_data())
    ap.add_argument("--model", default="sasrec", choices=["sasrec", "bert4rec"])
    ap.add_argument("--epsilons", default="1,4,8,inf")
    ap.add_argument("--epochs", type=int, default=40, help="fixed in advance (no validation)")
    ap.add_argument("-p", "--param", action="append", default=[], help="hyperparameter key=value")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-pop", action="store_true", help="skip the popularity baseline")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: one run, JSON to this file
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA under vmap: known, measured
    params = dict(kv.split("=", 1) for kv in args.param)
    params = {k: parse_value(v) for k, v in params.items()}

    if args.child:
        model, eps = args.child.split(":", 1)[0], float(args.epsilons)
        out = run_one(args.data, args.data_dir, model, eps, args.epochs, params, args.threads)
        Path(args.child.split(":", 1)[1]).write_text(json.dumps(out, default=float))
        return [out]

    runs = ([] if args.no_pop else [("pop", "inf")]) + [(args.model, e) for e in args.epsilons.split(",")]
    results = []
    for model, eps in runs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            tmp = f.name
        cmd = [sys.executable, __file__, "--data", args.data, "--data-dir", str(args.data_dir), "--epsilons", eps, "--epochs", str(args.epochs),
               "--threads", str(args.threads), "--child", f"{model}:{tmp}"]
        for kv in args.param:
            cmd += ["-p", kv]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        r = json.loads(Path(tmp).read_text())
        os.unlink(tmp)
        results.append(r)
        pr = r["privacy"] or {}
        print(f"RESULT {r['data']} {r['model']} eps={r['epsilon']} NDCG@10 {r['NDCG@10']:.4f} "
              f"HR@10 {r['HR@10']:.4f} train {r['train_seconds']:.0f}s peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f" | spent eps {pr['epsilon']:.3f} delta {pr['delta']:.2g} sigma {pr['noise_multiplier']:.3f}"
                 f" q {pr['sample_rate']:.4f} C {pr['max_grad_norm']} steps {pr['steps']}" if pr else ""),
              flush=True)
    load = os.getloadavg()
    meta = {"command": "python benchmarks/privacy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "loadavg": load, "results": results}
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(meta, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
