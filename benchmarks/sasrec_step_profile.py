"""Where a SASRec training step spends its time on Beauty: batch, forward, loss, backward, optimiser.

Runs ``--steps`` training steps of each ``--training`` mode (bf16 autocast,
right-aligned positions) and prints seconds per phase and microseconds per
target. ``--dropout torch`` draws the model's dropout masks with
``torch.nn.functional.dropout`` instead, to measure what
:func:`attnrec.models.attention.fast_dropout` saves.

    python benchmarks/sasrec_step_profile.py --steps 40 --dropout fast
    python benchmarks/sasrec_step_profile.py --steps 40 --dropout torch
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import attnrec.models  # noqa: E402,F401
from attnrec.data.preprocess import load_dataset  # noqa: E402
from attnrec.data.splits import leave_one_out  # noqa: E402
from attnrec.models import attention  # noqa: E402
from attnrec.models.batching import (length_grouped_batches, training_prefixes,  # noqa: E402
                                     training_windows, window_ids)
from attnrec.models.sasrec import SASRec  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/beauty.txt")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--dropout", choices=["fast", "torch"], default="fast")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dropout == "torch":
        attention.fast_dropout = lambda x, p, training=True: torch.nn.functional.dropout(x, p, training)
    train = leave_one_out(load_dataset(Path(args.data))[0]).train
    for mode, bs in (("positions", 128), ("prefixes", 256)):
        m = SASRec(training=mode, align="right", batch_size=bs)
        m.dropout_ = 0.5
        m.net_ = net = m._build(train.n_items)
        net.train()
        firsts, lens = (training_prefixes if mode == "prefixes" else training_windows)(train, m.max_len)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        sec = dict.fromkeys(("batch", "forward", "loss", "backward", "step"), 0.0)
        targets = 0
        for step, sel in enumerate(length_grouped_batches(lens, bs, np.random.default_rng(0))):
            if step == args.steps:
                break
            t0 = time.perf_counter()
            n = lens[sel]
            ids, real = window_ids(train.items, firsts[sel], n, left=True)
            seq = torch.from_numpy(ids)
            if mode == "prefixes":
                tgt, rows = torch.from_numpy(train.items[firsts[sel] + n]), None
            else:
                tgt = torch.from_numpy(window_ids(train.items, firsts[sel] + 1, n, left=True)[0])
                rows = torch.from_numpy(real)
            t1 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = net(seq)
                t2 = time.perf_counter()
                loss = m._loss(h[:, -1], tgt) if rows is None else m._loss(h[rows], tgt[rows])
            t3 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t4 = time.perf_counter()
            opt.step()
            t5 = time.perf_counter()
            for k, a, b in (("batch", t0, t1), ("forward", t1, t2), ("loss", t2, t3), ("backward", t3, t4),
                            ("step", t4, t5)):
                sec[k] += b - a
            targets += len(sel) if rows is None else int(real.sum())
        total = sum(sec.values())
        print(f"{mode} ({args.dropout} dropout, {args.steps} steps, {targets} targets): "
              + ", ".join(f"{k} {v:.2f}s" for k, v in sec.items())
              + f"; {1e6 * total / targets:.0f} us/target")


if __name__ == "__main__":
    main()
