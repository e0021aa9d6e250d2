"""A large synthetic interaction log for scale tests (written to Parquet chunk by chunk).

Not a realistic shop (see :mod:`attnrec.data.synthetic` for that): it has the
*shape* of a large log. Users are active in a Zipf-like way, item popularity
follows a power law over a shuffled catalogue, a user's next item is often close
to their previous one in a hidden item order (so there is sequential signal to
learn), and rows are in global time order, so every user's events are scattered
through the whole file, as in a real event stream. Memory use is one chunk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_scale_parquet(path: str | Path, n_events: int = 10_000_000, n_users: int = 1_000_000,
                        n_items: int = 1_000_000, seed: int = 0, chunk: int = 1_000_000,
                        p_local: float = 0.5) -> Path:
    """Write ``user_id, item_id, timestamp`` (int64) rows to ``path``; returns it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    item_perm = rng.permutation(n_items).astype(np.int64) + 1  # hidden order -> raw item id
    user_perm = rng.permutation(n_users).astype(np.int64) + 1
    last = np.full(n_users, -1, dtype=np.int64)  # each user's previous item (hidden order)
    schema = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64())])
    t = 1_600_000_000
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for start in range(0, n_events, chunk):
            m = min(chunk, n_events - start)
            # activity: power law over users (rank r has weight ~ r^-0.8), every user reachable
            u = np.minimum((n_users * rng.random(m) ** 2.0).astype(np.int64), n_users - 1)
            pop = np.minimum((n_items * rng.random(m) ** 3.0).astype(np.int64), n_items - 1)
            # sequential signal: with p_local, a neighbour of the user's previous item
            prev = last[u]
            local = (rng.random(m) < p_local) & (prev >= 0)
            step = rng.integers(1, 4, m)
            nxt = np.where(local, (prev + step) % n_items, pop)
            last[u] = nxt  # duplicates within a chunk: the last write wins, fine for a generator
            ts = t + np.arange(m, dtype=np.int64)
            t += m
            w.write_table(pa.table({"user_id": user_perm[u], "item_id": item_perm[nxt], "timestamp": ts},
                                   schema=schema))
    return path
