"""Bounded-memory sequence building for logs larger than comfortable memory.

:func:`load_sequences_chunked` reads Parquet (a file or a directory of files)
or CSV record batch by record batch and never holds the raw table:

1. **pass 1** collects the distinct user and item ids (per batch ``unique``,
   merged as it goes) and counts the rows;
2. the id maps are fixed in :func:`attnrec.data.preprocess.build_sequences`'s
   order (numeric when every id is a non-negative integer, else lexicographic);
3. **pass 2** maps every batch to dense codes and fills preallocated compact
   columns (int32 user, int32 item, float64 time: 16 bytes a row);
4. a stable sort by (user, time) lays the rows out as CSR (file order breaks
   ties, as in ``build_sequences``).

Peak memory is about ``40 bytes x rows`` plus the id maps and one record batch,
independent of how the ids are spelled in the file (a 10M-row log: well under
1 GiB of arrays). The result equals ``build_sequences(read_log(path))`` with the
default (no-filter) preprocessing; filters, dedupe and k-core need the in-memory
path.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attnrec.data.dataset import IdMap, SequenceData
from attnrec.data.errors import DataError
from attnrec.data.columns import ColumnMap, as_string, resolve_columns, to_seconds
from attnrec.data.readers import detect_format
from attnrec.data.preprocess import _dense_order

log = logging.getLogger(__name__)


def _open(path: Path, format: str):
    """-> (column names, function(columns, batch_size) -> iterator of RecordBatches)."""
    if format == "auto":
        format = "parquet" if path.is_dir() else detect_format(path)
    if format == "parquet":
        import pyarrow.dataset as ds

        dataset = ds.dataset(path, format="parquet")

        def batches(columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
            return dataset.to_batches(columns=columns, batch_size=batch_size)

        return dataset.schema.names, batches
    if format in ("csv", "tsv"):
        import pyarrow.csv as pcsv

        sep = "\t" if format == "tsv" else ","
        with open(path, encoding="utf-8") as f:
            names = next(iter(f)).rstrip("\r\n").split(sep)

        def batches(columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
            # ids read as text: a later block must not change their type (pass 1 vs pass 2)
            opts = pcsv.ConvertOptions(include_columns=columns,
                                       column_types={c: pa.string() for c in columns[:2]})
            reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=max(1 << 20, batch_size * 32)),
                                   parse_options=pcsv.ParseOptions(delimiter=sep), convert_options=opts)
            yield from reader

        return names, batches
    raise DataError(f"chunked loading reads Parquet or CSV/TSV, not {format!r}", path)


def _ids(arr: pa.Array) -> np.ndarray:
    """An id column as int64 numpy (non-negative integer ids) or as str numpy."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_integer(arr.type) and arr.null_count == 0:
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    s = as_string(arr)
    if s.null_count:
        raise DataError("missing user or item ids (the in-memory loader reports the lines)")
    return np.asarray(s.to_numpy(zero_copy_only=False), dtype=str)


def _times(arr: pa.Array | None, n: int, start: int) -> np.ndarray:
    if arr is None:
        return np.arange(start, start + n, dtype=np.float64)  # no times: file order
    if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
        return to_seconds(arr)
    if pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)


class _Uniques:
    """Running set of distinct ids: per-batch uniques, merged when the buffer grows."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.merged: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        u = np.unique(values)
        self.parts.append(u)
        self.size += len(u)
        if self.size > 4 * max(1 << 20, 0 if self.merged is None else len(self.merged)):
            self._merge()

    def _merge(self) -> None:
        parts = self.parts + ([self.merged] if self.merged is not None else [])
        if any(p.dtype.kind == "U" for p in parts):  # a text id anywhere: all ids are text
            parts = [p.astype(str) for p in parts]
        self.merged = np.unique(np.concatenate(parts))
        self.parts, self.size = [], 0

    def result(self) -> np.ndarray:
        self._merge()
        return self.merged


class _Coder:
    """Raw id -> dense code in ``build_sequences`` order (``offset`` = first code)."""

    def __init__(self, uniq: np.ndarray, offset: int):
        self.offset = offset
        self.numeric = uniq.dtype.kind == "i" and (len(uniq) == 0 or uniq[0] >= 0)
        if self.numeric:
            self.sorted = uniq  # non-negative ints: numeric order == build_sequences' order
            self.rank = None
            self.raw = uniq.astype(str)
        else:
            self.sorted = uniq.astype(str)  # lexicographic, what searchsorted needs
            ordered, _ = _dense_order(self.sorted)  # numeric-aware order of the final ids
            pos = np.searchsorted(self.sorted, ordered)
            self.rank = np.empty(len(pos), dtype=np.int64)
            self.rank[pos] = np.arange(len(pos))
            self.raw = ordered

    def __call__(self, values: np.ndarray) -> np.ndarray:
        if self.numeric and values.dtype.kind == "i":
            code = np.searchsorted(self.sorted, values)
        else:
            code = np.searchsorted(self.sorted, values.astype(str))
            if self.rank is not None:
                code = self.rank[code]
        return code + self.offset

    def id_map(self) -> IdMap:
        return IdMap(self.raw.tolist(), offset=self.offset)


def load_sequences_chunked(path: str | Path, columns: ColumnMap | None = None, format: str = "auto",
                           batch_size: int = 1_000_000) -> SequenceData:
    """Per-user chronological sequences from a large Parquet/CSV log, in bounded memory."""
    path = Path(path)
    t0 = time.perf_counter()
    names, batches = _open(path, format)
    roles = resolve_columns(names, columns, path)
    ucol, icol, tcol = roles["user"], roles["item"], roles.get("timestamp")
    cols = [ucol, icol] + ([tcol] if tcol else [])

    users, items, n = _Uniques(), _Uniques(), 0
    for b in batches(cols, batch_size):  # pass 1: distinct ids, row count
        users.add(_ids(b.column(0)))
        items.add(_ids(b.column(1)))
        n += b.num_rows
    if n == 0:
        raise DataError("file has no rows", path)
    ucode, icode = _Coder(users.result(), 0), _Coder(items.result(), 1)
    del users, items
    n_users, n_items = len(ucode.raw), len(icode.raw)
    log.info("pass 1: %d rows, %d users, %d items (%.1fs)", n, n_users, n_items, time.perf_counter() - t0)

    u = np.empty(n, dtype=np.int32 if n_users < 2**31 else np.int64)
    it = np.empty(n, dtype=np.int32 if n_items < 2**31 else np.int64)
    ts = np.empty(n, dtype=np.float64)
    pos = 0
    for b in batches(cols, batch_size):  # pass 2: dense codes into preallocated columns
        m = b.num_rows
        u[pos : pos + m] = ucode(_ids(b.column(0)))
        it[pos : pos + m] = icode(_ids(b.column(1)))
        ts[pos : pos + m] = _times(b.column(2) if tcol else None, m, pos)
        pos += m
    if pos != n:
        raise DataError(f"the file changed while it was read ({n} rows, then {pos})", path)
    if np.isnan(ts).any():
        raise DataError("missing or unparseable timestamps (the in-memory loader reports the lines)", path)

    # CSR layout: stable sort by (user, time); rows are in file order, so file order breaks ties
    order = np.lexsort((ts, u))
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
    del u
    items_csr = it[order].astype(np.int64)
    del it
    ts_csr = ts[order] if tcol else None
    del ts, order
    data = SequenceData(indptr, items_csr, n_items, ucode.id_map(), icode.id_map(), ts_csr)
    log.info("built %d sequences over %d items from %d rows in %.1fs", n_users, n_items, n,
             time.perf_counter() - t0)
    return data
