"""The bounded-memory builder gives exactly what the in-memory loader gives."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnrec.data.chunked import load_sequences_chunked
from attnrec.data.columns import ColumnMap
from attnrec.data.preprocess import load_dataset


def assert_same(a, b):
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.items, b.items)
    assert a.n_items == b.n_items
    assert a.user_map == b.user_map and a.item_map == b.item_map
    if b.timestamps is None:
        assert a.timestamps is None
    else:
        np.testing.assert_array_equal(a.timestamps, b.timestamps)


def random_log(n=5000, users=300, items=200, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "user_id": rng.integers(0, users, n) * 7,  # sparse integer ids
        "item_id": rng.integers(1, items, n) * 3,
        "timestamp": rng.integers(0, 50, n),  # many ties: file order must break them
    }


def test_parquet_in_small_batches_equals_in_memory(tmp_path):
    t = pa.table(random_log())
    path = tmp_path / "log.parquet"
    pq.write_table(t, path, row_group_size=700)
    want, _ = load_dataset(path)
    got = load_sequences_chunked(path, batch_size=333)
    assert_same(got, want)


def test_parquet_directory_and_string_ids(tmp_path):
    d = random_log(seed=1)
    # mixed spellings: numeric-looking and not, so the order is lexicographic
    d["user_id"] = np.array([f"u{x}" if x % 2 else str(x) for x in d["user_id"]])
    (tmp_path / "parts").mkdir()
    for k in range(3):
        sl = slice(k * 1700, (k + 1) * 1700)
        pq.write_table(pa.table({c: v[sl] for c, v in d.items()}), tmp_path / "parts" / f"p{k}.parquet")
    got = load_sequences_chunked(tmp_path / "parts", batch_size=500)
    assert got.n_interactions == len(d["user_id"])
    # compare against the in-memory path on the concatenated file
    full = tmp_path / "full.parquet"
    pq.write_table(pa.table(d), full)
    want, _ = load_dataset(full)
    assert_same(got, want)


def test_csv_without_timestamps(tmp_path):
    d = random_log(n=3000, seed=2)
    path = tmp_path / "log.csv"
    with open(path, "w") as f:
        f.write("user_id,item_id\n")
        for u, i in zip(d["user_id"], d["item_id"]):
            f.write(f"{u},{i}\n")
    cols = ColumnMap(timestamp=None)
    want, _ = load_dataset(path, cols)
    got = load_sequences_chunked(path, cols, batch_size=100)
    assert_same(got, want)


def test_unsupported_format(tmp_path):
    from attnrec.data.errors import DataError

    p = tmp_path / "x.jsonl"
    p.write_text('{"user_id": 1, "item_id": 2}\n')
    with pytest.raises(DataError):
        load_sequences_chunked(p)
