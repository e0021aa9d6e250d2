"""One rank of `benchmarks/scale.py train` (started by torchrun): bounded SASRec training run.

argv: data steps batch_size threads sparse_grad (auto/true/false) [bundle_dir]. Epoch 1 is a 20-step warm-up; epoch 2 runs
``steps`` optimiser steps (each rank ``batch_size`` random training windows per
step, sampled softmax with 256 shared negatives) and is the one timed.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnrec import distributed
from attnrec.data.chunked import load_sequences_chunked
from attnrec.data.dataset import load_sequences_npz, save_sequences_npz
from attnrec.models import SASRec
from attnrec.models.batching import training_windows, window_ids
from attnrec.training import TrainConfig, train

path, steps, bs, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sparse_grad = {"auto": "auto", "true": True, "false": False}[sys.argv[5] if len(sys.argv) > 5 else "auto"]
bundle_dir = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] else None
distributed.init_from_env("gloo")
torch.set_num_threads(threads)
world = distributed.world_size()
t0 = time.perf_counter()
cache = Path(path + ".seq.npz")  # later runs skip the ~minutes of log parsing
if cache.exists():
    data = load_sequences_npz(cache)
else:
    data = load_sequences_chunked(path)
    if distributed.is_main():
        save_sequences_npz(cache, data)
t_load = time.perf_counter() - t0

m = SASRec(d_model=64, n_layers=2, n_heads=2, max_len=50, dropout=0.2, loss="sampled_softmax",
           n_negatives=256, batch_size=bs, sparse_grad=sparse_grad)
m.n_items_, m.dropout_, m._neg_probs = data.n_items, 0.2, None
torch.manual_seed(0)
m.net_ = m._build(data.n_items)
starts, lens = training_windows(data, m.max_len)
targets = {1: 0, 2: 0}


def batches(epoch, rng):
    n_steps = 20 if epoch == 1 else steps
    for _ in range(n_steps * world):  # every rank builds the same list and takes its share
        sel = rng.integers(0, len(starts), bs)
        seq, mask = window_ids(data.items, starts[sel], lens[sel])
        tgt, _ = window_ids(data.items, starts[sel] + 1, lens[sel])
        yield epoch, torch.from_numpy(seq), torch.from_numpy(tgt), torch.from_numpy(mask)


def loss_fn(module, batch):
    epoch, seq, tgt, mask = batch
    targets[epoch] += int(mask.sum())
    return m._loss(module(seq)[mask], tgt[mask])


res = train(m.net_, batches, loss_fn, TrainConfig(epochs=2, lr=1e-3, progress=False, patience=None))
total = distributed.all_reduce_sum([targets[2]])[0]
secs = res.history[1]["seconds"]
if distributed.is_main():
    print(json.dumps({"users": data.n_users, "items": data.n_items, "interactions": data.n_interactions,
                      "load_s": round(t_load, 1), "steps": steps, "batch_per_proc": bs,
                      "targets": int(total), "seconds": round(secs, 2),
                      "events_per_s": round(total / secs, 1),
                      "sparse_grad": bool(m.net_.cfg.sparse_grad), "loss": round(res.history[1]["loss"], 4)}),
          flush=True)  # before teardown: a dying peer gets this rank SIGTERMed
if bundle_dir and distributed.is_main():
    # the fitted state Recommender.fit would have set, then an ordinary bundle
    m.item_map_, m.user_map_, m.train_data_ = data.item_map, data.user_map, data
    m.item_counts_ = data.item_counts().astype(np.float32)
    m.history_, m.best_epoch_, m.epochs_run_ = res.history, res.epochs_run, res.epochs_run
    m.save(bundle_dir, info={"trained": f"{steps} steps of benchmarks/scale.py train"})
distributed.cleanup()
