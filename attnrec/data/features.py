"""Item and user side information, aligned to a model's dense ids.

A feature file is any table keyed by a raw id: RecBole ``.item`` / ``.user``
(``name:type`` header), CSV/TSV, or Parquet. Each column gets a *kind*:

* ``categorical``: one token (category, brand, gender, ...);
* ``multi``: several tokens in one cell (RecBole ``token_seq``, ``a|b|c``,
  a Parquet list of strings), e.g. genres;
* ``numeric``: a number, standardised with the fitted mean and std
  (missing or malformed values become the mean, i.e. 0);
* ``text``: free text (title, description) for a text encoder;
* ``vector``: a precomputed embedding (Parquet list column, RecBole
  ``float_seq``); ``.npy`` + ids files are attached with :func:`read_vectors`.

Kinds are inferred (RecBole types first, then column names and values) and can
be overridden. :class:`FeatureSchema` is *fitted* once (vocabularies, means,
stds) and then encodes any rows, including rows for items added later, so new
items get exactly the encoding the model was trained with.

Nothing here raises on bad data: unparseable lines, malformed values, ids
without a feature row and rows whose id the model does not know all end up in
a :class:`FeatureReport` (counts plus example ids) that is logged as a warning.

    >>> feats = load_features("ml-100k.item", data.item_map)
    >>> feats.report.summary()
    >>> feats.categorical["class"]      # (n_items + 1, width) token ids, 0 = none
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attnrec.data.columns import ALIASES
from attnrec.data.dataset import IdMap
from attnrec.data.errors import DataError
from attnrec.data.readers import detect_format, read_delimited_table

log = logging.getLogger(__name__)

KINDS = ("categorical", "multi", "numeric", "text", "vector")
# id column of a feature table: the generic names first, then every user/item id name
# the interaction readers recognise (one list: attnrec.data.columns.ALIASES)
ID_COLUMNS = tuple(dict.fromkeys(("item_id", "user_id", "id", *ALIASES["item"], *ALIASES["user"])))
TEXT_NAMES = ("title", "name", "description", "desc", "text", "summary", "movie_title",
              "overview", "plot", "review", "caption", "content", "headline")
MAX_TOKENS = 32  # cap on tokens kept per multi-valued cell
_EXAMPLES = 10  # ids listed per problem in a report


# --------------------------------------------------------------------------- report
@dataclass
class FeatureReport:
    """What did not line up between a feature table and the id map."""

    source: str = ""
    rows_read: int = 0
    rows_used: int = 0
    bad_lines: list[str] = field(default_factory=list)  # unparseable lines (line number: text)
    missing_ids: list[str] = field(default_factory=list)  # known ids without a feature row
    unknown_ids: list[str] = field(default_factory=list)  # feature rows for ids the map lacks
    duplicate_ids: list[str] = field(default_factory=list)  # later rows for an id are ignored
    empty_ids: int = 0  # rows whose id cell is empty (dropped)
    malformed: dict[str, list[str]] = field(default_factory=dict)  # column -> ids with a bad value

    @property
    def n_problems(self) -> int:
        return (len(self.bad_lines) + len(self.missing_ids) + len(self.duplicate_ids)
                + self.empty_ids + sum(len(v) for v in self.malformed.values()))

    def summary(self) -> str:
        def ex(ids: Sequence[str]) -> str:
            more = f", ... (+{len(ids) - _EXAMPLES})" if len(ids) > _EXAMPLES else ""
            return ", ".join(map(str, ids[:_EXAMPLES])) + more

        parts = [f"{self.source}: {self.rows_used}/{self.rows_read} rows used"]
        if self.bad_lines:
            parts.append(f"{len(self.bad_lines)} unparseable line(s) skipped: {ex(self.bad_lines)}")
        if self.empty_ids:
            parts.append(f"{self.empty_ids} row(s) without an id dropped")
        if self.duplicate_ids:
            parts.append(f"{len(self.duplicate_ids)} duplicate id(s), first row kept: "
                         f"{ex(self.duplicate_ids)}")
        if self.missing_ids:
            parts.append(f"{len(self.missing_ids)} id(s) without features: {ex(self.missing_ids)}")
        if self.unknown_ids:
            parts.append(f"{len(self.unknown_ids)} feature row(s) for ids not in the data: "
                         f"{ex(self.unknown_ids)}")
        for col, ids in self.malformed.items():
            parts.append(f"column {col!r}: {len(ids)} malformed value(s) (treated as missing) "
                         f"for id(s) {ex(ids)}")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {
            "source": self.source, "rows_read": self.rows_read, "rows_used": self.rows_used,
            "bad_lines": len(self.bad_lines), "missing_ids": len(self.missing_ids),
            "unknown_ids": len(self.unknown_ids), "duplicate_ids": len(self.duplicate_ids),
            "empty_ids": self.empty_ids,
            "malformed": {k: len(v) for k, v in self.malformed.items()},
        }


# --------------------------------------------------------------------------- reading
@dataclass
class RawTable:
    """A feature file as read: Arrow table, RecBole types (if any), skipped lines."""

    table: pa.Table
    types: dict[str, str]
    bad_lines: list[str]
    source: str


def read_feature_table(path: str | Path | pa.Table, sep: str | None = None) -> RawTable:
    """Read a RecBole ``.item``/``.user``, CSV/TSV or Parquet file (or wrap an Arrow table).

    The format is decided by :func:`attnrec.data.readers.detect_format` (unknown
    extensions are read as delimited text). Delimited files are read as strings
    (values are parsed per column kind later, so a bad value is reported, not
    fatal); lines with the wrong number of fields are skipped and listed in
    ``bad_lines``; a file that cannot be read at all gives an empty table.
    """
    if isinstance(path, pa.Table):
        return RawTable(path, {}, [], "<table>")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    fmt = detect_format(path, default="csv")
    if fmt == "parquet":
        return RawTable(pq.read_table(path), {}, [], str(path))
    if fmt not in ("csv", "tsv", "recbole"):
        raise DataError(f"feature files are CSV/TSV, Parquet or RecBole .item/.user; this one reads as {fmt}",
                        path)
    try:
        read = read_delimited_table(path, sep or ("\t" if fmt == "tsv" else None), recbole=fmt == "recbole",
                                    on_bad_lines="skip")
    except DataError as e:  # e.g. an empty file or an encoding problem: no rows, reported
        return RawTable(pa.table({}), {}, [e.message], str(path))
    bad_lines = [f"line {n if n is not None else '?'}: {t[:60]!r}" for n, t, _, _ in read.invalid_lines(path)]
    return RawTable(read.table, read.types, bad_lines, str(path))


def check_feature_file(path: str | Path, what: str = "feature file") -> RawTable:
    """Read a feature file strictly: a missing, unreadable or row-less file is a :class:`DataError`.

    :func:`load_features` tolerates such files (logged, no features); callers that
    take a file from the user check it with this first, so a bad file fails
    before any training starts instead of silently training without features.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such {what}", path)
    raw = read_feature_table(path)
    if raw.table.num_rows == 0:
        why = f" ({raw.bad_lines[0]})" if raw.bad_lines else ""
        raise DataError(f"the {what} has no usable rows{why}", path)
    return raw


def read_vectors(path: str | Path, ids: str | Path | Sequence[str] | None = None,
                 id_column: str | None = None, column: str | None = None
                 ) -> tuple[list[str], np.ndarray]:
    """Precomputed vectors keyed by raw id: ``(ids, matrix (n, dim) float32)``.

    * ``.npy`` matrix plus ``ids`` (a list, or a text file with one id per line,
      or a ``.npy`` of ids) in the same row order;
    * Parquet with an id column and a list column (``column``, default: the
      first list column).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        mat = np.load(path, allow_pickle=False).astype(np.float32)
        if ids is None:
            raise ValueError(f"{path}: a .npy vector file needs its ids (list or file)")
        if isinstance(ids, (str, Path)):
            p = Path(ids)
            id_list = ([str(x) for x in np.load(p, allow_pickle=False)] if p.suffix == ".npy"
                       else [ln.strip() for ln in p.read_text().splitlines() if ln.strip()])
        else:
            id_list = [str(x) for x in ids]
        if len(id_list) != len(mat):
            raise ValueError(f"{path}: {len(mat)} vectors but {len(id_list)} ids")
        return id_list, mat
    table = pq.read_table(path)
    id_col = id_column or _find_id_column(table.column_names)
    if column is None:
        column = next((c for c in table.column_names
                       if pa.types.is_list(table.schema.field(c).type)
                       or pa.types.is_large_list(table.schema.field(c).type)), None)
        if column is None:
            raise ValueError(f"{path}: no list column holding vectors")
    id_list = [str(x) for x in table.column(id_col).to_pylist()]
    return id_list, _vectors_from_lists(table.column(column).to_pylist())[0]


def _vectors_from_lists(values: list) -> tuple[np.ndarray, np.ndarray]:
    """Lists (or None) -> ``(matrix, ok mask)``; rows of the wrong length or non-finite are not ok."""
    lens = [len(v) for v in values if v is not None]
    dim = max(set(lens), key=lens.count) if lens else 0  # the most common length
    mat = np.zeros((len(values), dim), dtype=np.float32)
    ok = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or len(v) != dim:
            continue
        try:
            row = np.asarray(v, dtype=np.float32)
        except (TypeError, ValueError):
            continue
        if np.isfinite(row).all():
            mat[i], ok[i] = row, True
    return mat, ok


def _find_id_column(names: Sequence[str]) -> str:
    low = {n.lower(): n for n in names}
    for cand in ID_COLUMNS:
        if cand in low:
            return low[cand]
    if not names:
        raise ValueError("feature table has no columns")
    return names[0]


# --------------------------------------------------------------------------- schema
_FLOAT_RE = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


def _split_tokens(value: Any, sep: str | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, np.ndarray)):
        toks = [str(v).strip() for v in value if v is not None]
    else:
        toks = str(value).split(sep) if sep else str(value).split()
    return [t.strip() for t in toks if t.strip()][:MAX_TOKENS]


def _infer_kind(name: str, col: pa.ChunkedArray, rtype: str | None) -> tuple[str, str | None]:
    """``(kind, separator)`` of one column."""
    t = col.type
    lname = name.lower()
    if rtype is not None:
        if rtype == "float":
            return "numeric", None
        if rtype == "float_seq":
            return "vector", None
        if lname in TEXT_NAMES:
            return "text", None
        return ("multi", None) if rtype == "token_seq" else ("categorical", None)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return ("vector", None) if pa.types.is_floating(t.value_type) or pa.types.is_integer(
            t.value_type) else ("multi", None)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return "numeric", None
    if pa.types.is_boolean(t):
        return "categorical", None
    if lname in TEXT_NAMES:
        return "text", None
    values = [v for v in col.to_pylist()[:2000] if v not in (None, "")]
    if not values:
        return "categorical", None
    if sum(bool(_FLOAT_RE.match(str(v))) for v in values) >= 0.95 * len(values):
        return "numeric", None
    for sep in ("|", ";"):
        if sum(sep in str(v) for v in values) >= 0.2 * len(values):
            return "multi", sep
    n_words = np.mean([len(str(v).split()) for v in values])
    n_unique = len(set(values))
    if n_words > 4 or (n_words > 1.5 and n_unique > 0.5 * len(values)):
        return "text", None
    return "categorical", None


@dataclass
class ColumnSpec:
    name: str
    kind: str
    sep: str | None = None  # token separator for "multi" (None = whitespace)


@dataclass
class FeatureSchema:
    """Fitted column kinds, vocabularies and numeric statistics (JSON round-trips)."""

    id_column: str
    columns: list[ColumnSpec]
    vocab: dict[str, list[str]] = field(default_factory=dict)  # token id = index + 1 (0 = none)
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # numeric mean, std
    vector_dim: dict[str, int] = field(default_factory=dict)

    def names(self, *kinds: str) -> list[str]:
        return [c.name for c in self.columns if c.kind in kinds]

    @classmethod
    def fit(cls, raw: RawTable, id_column: str | None = None,
            kinds: Mapping[str, str] | None = None, exclude: Iterable[str] = (),
            min_freq: int = 1) -> "FeatureSchema":
        """Infer/accept column kinds and learn vocabularies and statistics from ``raw``.

        ``kinds`` overrides inference per column (``"drop"`` drops a column; a
        ``"multi:|"`` value sets the separator). Tokens seen fewer than
        ``min_freq`` times map to "none".
        """
        table = raw.table
        id_col = id_column or _find_id_column(table.column_names)
        kinds = dict(kinds or {})
        exclude = set(exclude)
        specs = []
        for name in table.column_names:
            if name == id_col or name in exclude or kinds.get(name) == "drop":
                continue
            if name in kinds:
                kind, _, sep = kinds[name].partition(":")
                if kind not in KINDS:
                    raise ValueError(f"column {name!r}: kind must be one of {KINDS}, got {kind!r}")
                specs.append(ColumnSpec(name, kind, sep or None))
            else:
                kind, sep = _infer_kind(name, table.column(name), raw.types.get(name))
                specs.append(ColumnSpec(name, kind, sep))
        schema = cls(id_col, specs)
        for spec in specs:
            values = table.column(spec.name).to_pylist()
            if spec.kind in ("categorical", "multi"):
                counts: dict[str, int] = {}
                for v in values:
                    toks = _split_tokens(v, spec.sep) if spec.kind == "multi" else (
                        [] if v in (None, "") else [str(v).strip()])
                    for tok in toks:
                        counts[tok] = counts.get(tok, 0) + 1
                schema.vocab[spec.name] = sorted(t for t, c in counts.items() if c >= min_freq)
            elif spec.kind == "numeric":
                x, ok = _parse_floats(values)
                mean = float(x[ok].mean()) if ok.any() else 0.0
                std = float(x[ok].std()) if ok.sum() > 1 else 1.0
                schema.stats[spec.name] = (mean, std if std > 1e-12 else 1.0)
            elif spec.kind == "vector":
                mat, _ = _vector_column(values)
                schema.vector_dim[spec.name] = int(mat.shape[1])
        log.info("feature schema for %s: %s", raw.source,
                 ", ".join(f"{c.name}={c.kind}" for c in specs))
        return schema

    # -- encoding ----------------------------------------------------------
    def encode(self, raw: RawTable | pa.Table | Sequence[Mapping[str, Any]],
               report: FeatureReport | None = None) -> "EncodedRows":
        """Encode rows with the fitted vocabularies/statistics (unknown tokens -> 0)."""
        if isinstance(raw, pa.Table):
            raw = RawTable(raw, {}, [], "<table>")
        elif not isinstance(raw, RawTable):
            raw = RawTable(_rows_to_table(list(raw)), {}, [], "<rows>")
        table = raw.table
        report = report if report is not None else FeatureReport(source=raw.source)
        n = table.num_rows
        if self.id_column not in table.column_names:
            log.warning("%s: no id column %r; no features read", raw.source, self.id_column)
            report.rows_read = n
            return EncodedRows.empty(self)
        ids = ["" if v is None else str(v).strip() for v in table.column(self.id_column).to_pylist()]
        enc = EncodedRows(ids=ids)
        for spec in self.columns:
            col = table.column(spec.name).to_pylist() if spec.name in table.column_names else [None] * n
            bad = np.zeros(n, dtype=bool)
            if spec.kind in ("categorical", "multi"):
                index = {t: i + 1 for i, t in enumerate(self.vocab.get(spec.name, []))}
                width = 1
                rows = []
                for v in col:
                    toks = _split_tokens(v, spec.sep) if spec.kind == "multi" else (
                        [] if v in (None, "") else [str(v).strip()])
                    codes = [index[t] for t in toks if t in index]
                    rows.append(codes)
                    width = max(width, len(codes))
                arr = np.zeros((n, width), dtype=np.int64)
                for i, codes in enumerate(rows):
                    arr[i, : len(codes)] = codes
                enc.categorical[spec.name] = arr
            elif spec.kind == "numeric":
                x, ok = _parse_floats(col)
                bad = ~ok & np.array([v not in (None, "") for v in col], dtype=bool)
                mean, std = self.stats[spec.name]
                enc.numeric[spec.name] = np.where(ok, (x - mean) / std, 0.0).astype(np.float32)
            elif spec.kind == "vector":
                mat, ok = _vector_column(col, self.vector_dim.get(spec.name))
                bad = ~ok & np.array([v not in (None, "") for v in col], dtype=bool)
                enc.vectors[spec.name] = mat
                enc.vector_ok[spec.name] = ok
            enc.raw[spec.name] = ["" if v is None else _as_text(v) for v in col]
            if bad.any():
                report.malformed.setdefault(spec.name, []).extend(
                    ids[i] for i in np.nonzero(bad)[0])
        report.rows_read += n
        report.bad_lines.extend(raw.bad_lines)
        return enc

    # -- persistence -------------------------------------------------------
    def to_json(self) -> dict:
        return {"id_column": self.id_column,
                "columns": [[c.name, c.kind, c.sep] for c in self.columns],
                "vocab": self.vocab, "stats": {k: list(v) for k, v in self.stats.items()},
                "vector_dim": self.vector_dim}

    @classmethod
    def from_json(cls, obj: dict) -> "FeatureSchema":
        return cls(obj["id_column"], [ColumnSpec(*c) for c in obj["columns"]], obj["vocab"],
                   {k: (float(a), float(b)) for k, (a, b) in obj["stats"].items()},
                   {k: int(v) for k, v in obj["vector_dim"].items()})


def _as_text(v: Any) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(x) for x in v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _parse_floats(values: list) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros(len(values), dtype=np.float64)
    ok = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or v == "":
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            x[i], ok[i] = f, True
    return x, ok


def _vector_column(values: list, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Vectors from lists or space/comma separated strings (RecBole ``float_seq``)."""
    parsed = []
    for v in values:
        if v is None or v == "":
            parsed.append(None)
        elif isinstance(v, str):
            try:
                parsed.append([float(t) for t in re.split(r"[\s,]+", v.strip()) if t])
            except ValueError:
                parsed.append([])  # malformed: a length no row has
        else:
            parsed.append(list(v))
    if dim is not None:
        parsed = [p if p is None or len(p) == dim else [] for p in parsed]
        parsed.append([0.0] * dim)  # pins the most common length to dim
        mat, ok = _vectors_from_lists(parsed)
        return mat[:-1], ok[:-1]
    return _vectors_from_lists(parsed)


def _rows_to_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    names = list(dict.fromkeys(k for r in rows for k in r))
    cols = {}
    for name in names:
        vals = [r.get(name) for r in rows]
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in vals):
            cols[name] = pa.array([None if v is None else list(v) for v in vals])
        else:
            cols[name] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    return pa.table(cols)


@dataclass
class EncodedRows:
    """Encoded feature rows in table order (raw ids in ``ids``)."""

    ids: list[str]
    categorical: dict[str, np.ndarray] = field(default_factory=dict)  # (n, width) int64
    numeric: dict[str, np.ndarray] = field(default_factory=dict)  # (n,) float32
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # (n, dim) float32
    vector_ok: dict[str, np.ndarray] = field(default_factory=dict)  # (n,) bool
    raw: dict[str, list[str]] = field(default_factory=dict)  # cell text per column

    @classmethod
    def empty(cls, schema: FeatureSchema) -> "EncodedRows":
        enc = cls(ids=[])
        for spec in schema.columns:
            if spec.kind in ("categorical", "multi"):
                enc.categorical[spec.name] = np.zeros((0, 1), np.int64)
            elif spec.kind == "numeric":
                enc.numeric[spec.name] = np.zeros(0, np.float32)
            elif spec.kind == "vector":
                dim = schema.vector_dim.get(spec.name, 0)
                enc.vectors[spec.name] = np.zeros((0, dim), np.float32)
                enc.vector_ok[spec.name] = np.zeros(0, bool)
            enc.raw[spec.name] = []
        return enc


# --------------------------------------------------------------------------- aligned table
@dataclass
class FeatureTable:
    """Features indexed by dense id: row ``i`` belongs to dense id ``i``.

    For items, row 0 is padding (ids start at 1); for users, row 0 is user 0.
    ``present[i]`` says whether id ``i`` has a feature row.
    """

    schema: FeatureSchema
    id_map: IdMap
    categorical: dict[str, np.ndarray]
    numeric: np.ndarray  # (n_rows, n_numeric) float32, standardised, missing = 0
    vectors: dict[str, np.ndarray]
    raw: dict[str, list[str]]
    present: np.ndarray
    report: FeatureReport

    @property
    def n_rows(self) -> int:
        return len(self.present)

    @property
    def numeric_names(self) -> list[str]:
        return self.schema.names("numeric")

    @classmethod
    def allocate(cls, schema: FeatureSchema, id_map: IdMap, report: FeatureReport) -> "FeatureTable":
        n = len(id_map) + id_map.offset
        return cls(
            schema, id_map,
            {c: np.zeros((n, 1), np.int64) for c in schema.names("categorical", "multi")},
            np.zeros((n, len(schema.names("numeric"))), np.float32),
            {c: np.zeros((n, schema.vector_dim.get(c, 0)), np.float32)
             for c in schema.names("vector")},
            {c: [""] * n for c in schema.names("categorical", "multi", "numeric", "text", "vector")},
            np.zeros(n, dtype=bool), report,
        )

    def _grow(self, n: int) -> None:
        extra = n - self.n_rows
        if extra <= 0:
            return
        for c, a in self.categorical.items():
            self.categorical[c] = np.concatenate([a, np.zeros((extra, a.shape[1]), a.dtype)])
        self.numeric = np.concatenate([self.numeric, np.zeros((extra, self.numeric.shape[1]),
                                                              np.float32)])
        for c, a in self.vectors.items():
            self.vectors[c] = np.concatenate([a, np.zeros((extra, a.shape[1]), a.dtype)])
        for c in self.raw:
            self.raw[c].extend([""] * extra)
        self.present = np.concatenate([self.present, np.zeros(extra, bool)])

    def update(self, enc: EncodedRows, add_unknown: bool = False) -> list[int]:
        """Write encoded rows into their dense rows; returns the dense ids written.

        Ids the map does not know are added when ``add_unknown`` (new items),
        otherwise listed in ``report.unknown_ids``. Only the first row of an id
        in ``enc`` is used.
        """
        written: list[int] = []
        seen: set[str] = set()
        numeric_names = self.numeric_names
        for i, rid in enumerate(enc.ids):
            if not rid:
                self.report.empty_ids += 1
                continue
            if rid in seen:
                self.report.duplicate_ids.append(rid)
                continue
            seen.add(rid)
            dense = self.id_map.get(rid)
            if dense is None:
                if not add_unknown:
                    self.report.unknown_ids.append(rid)
                    continue
                dense = self.id_map.add(rid)
                self._grow(dense + 1)
            for c, a in enc.categorical.items():
                row = a[i]
                if a.shape[1] > self.categorical[c].shape[1]:
                    old = self.categorical[c]
                    self.categorical[c] = np.zeros((old.shape[0], a.shape[1]), np.int64)
                    self.categorical[c][:, : old.shape[1]] = old
                self.categorical[c][dense] = 0
                self.categorical[c][dense, : len(row)] = row
            for j, c in enumerate(numeric_names):
                self.numeric[dense, j] = enc.numeric[c][i]
            for c, a in enc.vectors.items():
                self.vectors[c][dense] = a[i]
            for c, vals in enc.raw.items():
                self.raw[c][dense] = vals[i]
            self.present[dense] = True
            written.append(dense)
        self.report.rows_used = int(self.present[self.id_map.offset:].sum())
        return written

    def _refresh_missing(self) -> None:
        missing = np.nonzero(~self.present[self.id_map.offset:])[0] + self.id_map.offset
        self.report.missing_ids = self.id_map.decode(missing)

    def texts(self, columns: Sequence[str] | None = None, sep: str = ". ") -> list[str]:
        """One string per dense row: the chosen columns' cell text joined (default: text columns)."""
        columns = list(columns) if columns else self.schema.names("text")
        out = []
        for i in range(self.n_rows):
            parts = [self.raw[c][i] for c in columns if c in self.raw and self.raw[c][i]]
            out.append(sep.join(parts))
        return out

    def attach_vectors(self, name: str, ids: Sequence[str], matrix: np.ndarray) -> None:
        """Add a precomputed vector column from ``(ids, matrix)`` (e.g. :func:`read_vectors`)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        self.schema.vector_dim[name] = int(matrix.shape[1])
        if name not in self.schema.names("vector"):
            self.schema.columns.append(ColumnSpec(name, "vector"))
        out = np.zeros((self.n_rows, matrix.shape[1]), np.float32)
        bad, unknown = [], []
        for rid, row in zip(ids, matrix):
            dense = self.id_map.get(rid)
            if dense is None:
                unknown.append(str(rid))
            elif not np.isfinite(row).all():
                bad.append(str(rid))
            else:
                out[dense] = row
        self.vectors[name] = out
        self.raw.setdefault(name, [""] * self.n_rows)
        if bad:
            self.report.malformed.setdefault(name, []).extend(bad)
        if unknown:
            self.report.unknown_ids.extend(unknown)
            log.warning("vectors %r: %d id(s) not in the data, e.g. %s", name, len(unknown),
                        unknown[:5])


def load_features(
    source: str | Path | pa.Table,
    id_map: IdMap,
    id_column: str | None = None,
    kinds: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    schema: FeatureSchema | None = None,
    add_unknown: bool = False,
    vectors: str | Path | None = None,
    vector_ids: str | Path | Sequence[str] | None = None,
    sep: str | None = None,
    min_freq: int = 1,
) -> FeatureTable:
    """Read a feature file and align it to ``id_map`` (item or user dense ids).

    ``schema`` reuses a fitted schema (e.g. a trained model's); otherwise one is
    fitted on this table. ``add_unknown`` adds ids the map lacks (catalogue items
    that have no interactions yet) instead of reporting them. ``vectors`` (with
    ``vector_ids`` for ``.npy``) attaches precomputed embeddings as column
    ``"vectors"``. Problems are logged and kept in ``table.report``.
    """
    raw = read_feature_table(source, sep=sep)
    report = FeatureReport(source=raw.source)
    if schema is None:
        if raw.table.num_columns == 0:
            schema = FeatureSchema(id_column or "item_id", [])
        else:
            schema = FeatureSchema.fit(raw, id_column, kinds, exclude, min_freq)
    enc = schema.encode(raw, report)
    table = FeatureTable.allocate(schema, id_map, report)
    table.update(enc, add_unknown=add_unknown)
    if vectors is not None:
        vids, mat = read_vectors(vectors, vector_ids)
        table.attach_vectors("vectors", vids, mat)
    table._refresh_missing()
    if report.n_problems or report.unknown_ids:
        log.warning("features: %s", report.summary())
    else:
        log.info("features: %s", report.summary())
    return table
