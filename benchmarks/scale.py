"""Scale benchmark: 10M events / 1M users / 1M items, 1M-item retrieval.

Sections (each prints one JSON line per measurement; run them separately):

* ``generate --out DIR``: the synthetic log (``attnrec.data.synthetic_scale``),
  written to Parquet in chunks;
* ``pipeline --data FILE``: the bounded-memory sequence builder
  (``attnrec.data.chunked``) in a fresh subprocess; reports wall time and the
  subprocess's peak RSS (``ru_maxrss``);
* ``train --data FILE --nproc N``: a short bounded SASRec run (sampled softmax,
  cost independent of the catalogue size) under ``torchrun --nproc_per_node=N``;
  reports training events (targets) per second over all ranks;
* ``retrieval``: recall@10 of the HNSW / IVF index against exact search and
  single-query top-10 latency p50/p99 over 1M items with 64-d vectors.

Usage::

    python benchmarks/scale.py generate --out /tmp/scale
    python benchmarks/scale.py pipeline --data /tmp/scale/events.parquet
    python benchmarks/scale.py train --data /tmp/scale/events.parquet --nproc 1
    python benchmarks/scale.py train --data /tmp/scale/events.parquet --nproc 2
    python benchmarks/scale.py retrieval --items 1000000 --dim 64
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from attnrec.benchmarking import BENCHMARKS, REPO


def emit(**kw) -> None:
    print(json.dumps(kw), flush=True)


# ---------------------------------------------------------------------------- generate
def cmd_generate(a) -> None:
    from attnrec.data.synthetic_scale import write_scale_parquet

    t0 = time.perf_counter()
    path = write_scale_parquet(Path(a.out) / "events.parquet", n_events=a.events, n_users=a.users,
                               n_items=a.items, seed=a.seed)
    emit(section="generate", path=str(path), events=a.events, users=a.users, items=a.items,
         seconds=round(time.perf_counter() - t0, 1), bytes=path.stat().st_size)


# ---------------------------------------------------------------------------- pipeline
_PIPELINE_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from attnrec.data.chunked import load_sequences_chunked
data = load_sequences_chunked(sys.argv[1], batch_size=int(sys.argv[2]))
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "users": data.n_users, "items": data.n_items,
                  "interactions": data.n_interactions,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def cmd_pipeline(a) -> None:
    out = subprocess.run([sys.executable, "-c", _PIPELINE_CHILD, a.data, str(a.batch_size)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    emit(section="pipeline", data=a.data, batch_size=a.batch_size, **{k: round(v, 1) if isinstance(v, float) else v
                                                                      for k, v in r.items()})


# ---------------------------------------------------------------------------- train
def cmd_train(a) -> None:
    script = BENCHMARKS / "_scale_train_child.py"
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}",
           str(script), a.data, str(a.steps), str(a.batch_size), str(a.threads), a.sparse_grad,
           a.save_bundle or ""]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(out.returncode)
    r = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    emit(section="train", nproc=a.nproc, threads_per_proc=a.threads, **r)


# ---------------------------------------------------------------------------- retrieval
def clustered_vectors(n: int, d: int, rng: np.random.Generator, clusters: int = 2000) -> np.ndarray:
    """Item-embedding-like vectors: a mixture of Gaussians with varied norms (popularity)."""
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    X = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    X *= rng.lognormal(0.0, 0.3, (n, 1)).astype(np.float32)
    return X


def cmd_retrieval(a) -> None:
    import faiss

    from attnrec.retrieval import ItemIndex

    faiss.omp_set_num_threads(a.threads)
    rng = np.random.default_rng(a.seed)
    kinds = a.kinds.split(",")
    for dist in a.distributions.split(","):
        if dist == "clustered":
            X = clustered_vectors(a.items, a.dim, rng)
            Q = clustered_vectors(a.queries, a.dim, rng)  # users live where items live
        else:
            X = rng.standard_normal((a.items, a.dim)).astype(np.float32)
            Q = rng.standard_normal((a.queries, a.dim)).astype(np.float32)
        V = np.concatenate([np.zeros((1, a.dim), np.float32), X])
        # histories to exclude: 20 of each user's own top-50 items (the hard case for filtering)
        exact = ItemIndex.build(V, "exact")
        top50, _ = exact.search_raw(Q, 50)
        hist = [row[rng.choice(50, 20, replace=False)] for row in top50]
        truth, _ = exact.search(Q, 10, exclude=hist)
        lat = _latencies(exact, Q[: a.exact_queries], hist)
        emit(section="retrieval", distribution=dist, kind="exact", items=a.items, dim=a.dim,
             p50_ms=lat[0], p99_ms=lat[1], cpu_p50_ms=lat[2], cpu_p99_ms=lat[3],
             queries=a.exact_queries, threads=a.threads)
        for kind in kinds:
            faiss.omp_set_num_threads(a.build_threads)
            t0 = time.perf_counter()
            index = ItemIndex.build(V, kind, hnsw_m=a.hnsw_m, ef_construction=a.ef_construction)
            build_s = time.perf_counter() - t0
            faiss.omp_set_num_threads(a.threads)
            for param in (a.ef_search.split(",") if kind == "hnsw" else a.nprobe.split(",")):
                index.set_search_params(ef_search=int(param) if kind == "hnsw" else None,
                                        nprobe=int(param) if kind == "ivf" else None)
                got, _ = index.search(Q, 10, exclude=hist)
                recall = float(np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got, truth)]))
                lat = _latencies(index, Q, hist)
                emit(section="retrieval", distribution=dist, kind=kind, items=a.items, dim=a.dim,
                     **({"ef_search": int(param), "M": a.hnsw_m, "ef_construction": a.ef_construction}
                        if kind == "hnsw" else {"nprobe": int(param)}),
                     recall_at_10=round(recall, 4), p50_ms=lat[0], p99_ms=lat[1],
                     cpu_p50_ms=lat[2], cpu_p99_ms=lat[3],
                     build_s=round(build_s, 1), queries=len(Q), threads=a.threads,
                     excluded_per_query=20)


def _latencies(index, Q, hist) -> tuple[float, float, float, float]:
    """Single-query top-10 latency (one request = one query, history excluded), ms.

    Returns wall-clock p50/p99 and this thread's CPU-time p50/p99: on a shared,
    overloaded machine the wall-clock tail is mostly time spent waiting for a core.
    """
    t, c = [], []
    for q, h in zip(Q, hist):
        t0, c0 = time.perf_counter(), time.thread_time()
        index.search(q[None], 10, exclude=[h])
        t.append(time.perf_counter() - t0)
        c.append(time.thread_time() - c0)
    t, c = np.array(t) * 1e3, np.array(c) * 1e3
    return tuple(round(float(np.percentile(x, p)), 3) for x in (t, c) for p in (50, 99))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--out", required=True)
    g.add_argument("--events", type=int, default=10_000_000)
    g.add_argument("--users", type=int, default=1_000_000)
    g.add_argument("--items", type=int, default=1_000_000)
    g.add_argument("--seed", type=int, default=0)
    pl = sub.add_parser("pipeline")
    pl.add_argument("--data", required=True)
    pl.add_argument("--batch-size", type=int, default=1_000_000)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True)
    t.add_argument("--nproc", type=int, default=1)
    t.add_argument("--threads", type=int, default=1, help="torch threads per process")
    t.add_argument("--steps", type=int, default=300, help="optimiser steps (global)")
    t.add_argument("--batch-size", type=int, default=128, help="per-process batch")
    t.add_argument("--sparse-grad", default="auto", choices=["auto", "true", "false"],
                   help="row-sparse item-table gradients (SASRec's sparse_grad; auto = on at this size)")
    t.add_argument("--save-bundle", default=None,
                   help="write the trained model as a bundle here (e.g. for serve_load.py at 1M items)")
    r = sub.add_parser("retrieval")
    r.add_argument("--items", type=int, default=1_000_000)
    r.add_argument("--dim", type=int, default=64)
    r.add_argument("--queries", type=int, default=1000)
    r.add_argument("--exact-queries", type=int, default=100)
    r.add_argument("--kinds", default="hnsw,ivf")
    r.add_argument("--distributions", default="clustered,gaussian")
    r.add_argument("--hnsw-m", type=int, default=32)
    r.add_argument("--ef-construction", type=int, default=100)
    r.add_argument("--ef-search", default="64,128,256")
    r.add_argument("--nprobe", default="32,128")
    r.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1 = one request per core)")
    r.add_argument("--build-threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    {"generate": cmd_generate, "pipeline": cmd_pipeline, "train": cmd_train, "retrieval": cmd_retrieval}[a.cmd](a)


if __name__ == "__main__":
    main()
