"""Readers for interaction files: CSV/TSV, Parquet, JSON Lines, sequence-per-line, RecBole.

:func:`detect_format` is the one place a file's format is decided (extension,
then a look at the lines for ``.txt``); :func:`read_log` reads interactions and
:func:`read_delimited_table` is the delimited-text reader shared with the feature
reader (:mod:`attnrec.data.features`).

Every interaction reader returns an :class:`~attnrec.data.log.InteractionLog` (raw
string ids, file order) whose ``report`` counts every row that was not kept.
Problems in a file raise :class:`~attnrec.data.errors.DataError` naming the file,
line and column.  Parsing is done by pyarrow; Python only walks the file line by
line when an error has to be located, so large files load at C speed and errors
still point at a line.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from attnrec.data.columns import ColumnMap, Locator, OnBadLines, resolve_columns, table_to_log
from attnrec.data.errors import DataError
from attnrec.data.log import InteractionLog, LoadReport

logger = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "parquet", "jsonl", "json", "sequence", "recbole")

_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".inter": "recbole",
    ".item": "recbole",  # RecBole side information (feature files)
    ".user": "recbole",
    ".txt": "txt",  # sequence or delimited, decided by looking at the lines
}


# --------------------------------------------------------------------------- locating lines


def _scan_lines(path: Path, records: np.ndarray, blank_ws: bool = False) -> dict[int, int]:
    """1-based non-blank record numbers -> physical line numbers, by one streaming pass.

    Only runs when something has to be reported, so normal loads never touch Python lines.
    Blank means empty (as pyarrow's CSV parser sees it), or whitespace-only with
    ``blank_ws``.  Quoted fields spanning lines are not accounted for.
    """
    wanted = set(int(r) for r in records)
    out: dict[int, int] = {}
    if not wanted:
        return out
    last = max(wanted)
    rec = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if (raw.strip() if blank_ws else raw.rstrip(b"\r\n")):
                rec += 1
                if rec in wanted:
                    out[rec] = lineno
                    if rec >= last:
                        break
    return out


def _text_locator(
    path: Path, header_records: int, skipped: list[int], blank_ws: bool = False
) -> Locator:
    """Locator for line-based files read by pyarrow (blank lines skipped by the parser)."""
    skipped = sorted(skipped)

    def locate(rows: np.ndarray) -> list[tuple[int | None, int | None]]:
        recs = []
        for r in rows:
            rec = int(r) + header_records + 1
            for s in skipped:  # malformed records dropped before the table was built
                if s <= rec:
                    rec += 1
            recs.append(rec)
        lines = _scan_lines(path, np.array(recs), blank_ws)
        return [(lines.get(rec), None) for rec in recs]

    return locate



# --------------------------------------------------------------------------- delimited text


def _first_line(path: Path) -> str | None:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.rstrip("\r\n")
    return None


def _sniff_sep(path: Path, header: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab", ".inter", ".item", ".user"):
        return "\t"
    counts = {s: header.count(s) for s in (",", "\t", ";", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


@dataclass
class DelimitedTable:
    """A delimited file read as strings; ``invalid`` lists skipped records."""

    table: pa.Table  # string columns under their bare names (RecBole types stripped)
    types: dict[str, str]  # RecBole type of each column ({} for plain CSV/TSV)
    invalid: list[tuple[int | None, str, int, int]]  # (record number, text, expected, found)
    sep: str

    def invalid_lines(self, path: Path) -> list[tuple[int | None, str, int, int]]:
        """``invalid`` with record numbers turned into physical line numbers."""
        numbers = [n for n, *_ in self.invalid if n is not None]
        lines = _scan_lines(path, np.array(numbers))
        return [(lines.get(n) if n is not None else None, t, e, a) for n, t, e, a in self.invalid]


def read_header(path: Path, sep: str | None = None, recbole: bool = False) -> tuple[str, list[str]]:
    """``(separator, column names)`` of a delimited file; RecBole ``name:type`` headers keep the type."""
    header = _first_line(path)
    if header is None:
        raise DataError("file is empty", path)
    sep = sep or ("\t" if recbole else _sniff_sep(path, header))
    names = header.split(sep) if recbole else next(csv.reader([header], delimiter=sep))
    return sep, [h.strip() for h in names]


def read_delimited_table(
    path: Path,
    sep: str | None = None,
    recbole: bool = False,
    include: list[str] | None = None,
    on_bad_lines: OnBadLines = "error",
) -> DelimitedTable:
    """Read a CSV/TSV/RecBole file as strings (values are parsed later, per column).

    ``include`` names the (bare) columns to keep (default: all).  Records with the
    wrong number of fields raise a located :class:`DataError`, or with
    ``on_bad_lines="skip"`` are dropped and listed in ``invalid``.  RecBole files
    (``recbole=True``) are tab separated, unquoted, with ``name:type`` headers.
    """
    sep, raw_names = read_header(path, sep, recbole)
    bare = [h.split(":", 1)[0] for h in raw_names] if recbole else raw_names
    to_raw = dict(zip(bare, raw_names))
    wanted = [to_raw[c] for c in include] if include is not None else raw_names
    invalid: list[tuple[int | None, str, int, int]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip" if on_bad_lines == "skip" else "error"

    try:
        table = pcsv.read_csv(
            path,
            # Single-threaded so that invalid rows carry their record number.
            read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(
                delimiter=sep, quote_char=False if recbole else '"', invalid_row_handler=on_invalid
            ),
            # Everything as strings: callers parse values themselves to point at bad ones.
            convert_options=pcsv.ConvertOptions(
                include_columns=list(dict.fromkeys(wanted)),
                column_types={c: pa.string() for c in wanted},
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        if invalid:
            number, text, expected, actual = invalid[-1]
            line = _scan_lines(path, np.array([number])).get(number) if number else None
            raise DataError(
                f"expected {expected} fields separated by {sep!r}, found {actual}: {text[:80]!r}",
                path,
                line=line,
            ) from None
        raise DataError(f"could not parse: {e}", path) from None
    types: dict[str, str] = {}
    if recbole:
        names = [c.split(":", 1)[0] for c in table.column_names]
        types = {n: (c.split(":", 1)[1] if ":" in c else "token") for n, c in zip(names, table.column_names)}
        table = table.rename_columns(names)
    return DelimitedTable(table, types, invalid, sep)


def _read_delimited(
    path: Path,
    columns: ColumnMap | None,
    sep: str | None,
    on_bad_lines: OnBadLines,
    recbole: bool = False,
) -> InteractionLog:
    _, names = read_header(path, sep, recbole)
    # RecBole headers carry types ("user_id:token"); roles are matched on the bare name.
    roles = resolve_columns([h.split(":", 1)[0] for h in names] if recbole else names, columns, path)
    read = read_delimited_table(path, sep, recbole, list(dict.fromkeys(roles.values())), on_bad_lines)
    report = LoadReport(str(path))
    if read.invalid:
        report.rows_read += len(read.invalid)
        for line, text, expected, actual in read.invalid_lines(path):
            report.drop(
                "wrong number of fields",
                example=f"line {line if line is not None else '?'}: expected {expected} fields, "
                f"found {actual}: {text[:60]!r}",
            )
        logger.warning("%s: skipped %d malformed lines", path, len(read.invalid))
    if read.table.num_rows == 0 and not read.invalid:
        raise DataError("file has a header but no data rows", path)
    locate = _text_locator(path, 1, [n for n, *_ in read.invalid if n is not None])
    return table_to_log(read.table, roles, path, report, locate, on_bad_lines)


# --------------------------------------------------------------------------- parquet / json


def _read_parquet(
    path: Path, columns: ColumnMap | None, on_bad_lines: OnBadLines
) -> InteractionLog:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path) from None
    roles = resolve_columns(pf.schema_arrow.names, columns, path)
    table = pf.read(columns=list(dict.fromkeys(roles.values())))
    if table.num_rows == 0:
        raise DataError("file has no rows", path)

    def locate(rows):
        return [(None, int(r) + 1) for r in rows]

    return table_to_log(table, roles, path, LoadReport(str(path)), locate, on_bad_lines)


def _records_table(records: list[dict]) -> pa.Table:
    """Python records -> all-string table (used when pyarrow's strict JSON typing fails)."""
    keys = list(dict.fromkeys(k for r in records for k in r))

    def text(v):
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    return pa.table({k: pa.array([text(r.get(k)) for r in records], pa.string()) for k in keys})


def _read_jsonl(path: Path, columns: ColumnMap | None, on_bad_lines: OnBadLines) -> InteractionLog:
    if _first_line(path) is None:
        raise DataError("file is empty", path)
    report = LoadReport(str(path))
    try:
        table = pjson.read_json(path)
        locate = _text_locator(path, 0, [], blank_ws=True)
    except pa.ArrowInvalid as e:
        # Malformed line or mixed types: walk the file once to find lines and keep going.
        logger.info("%s: pyarrow could not read it (%s); reading line by line", path, e)
        records, line_of = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not a JSON object")
                except ValueError as err:
                    if on_bad_lines == "error":
                        raise DataError(f"malformed JSON line ({err})", path, line=lineno) from None
                    report.rows_read += 1
                    example = f"line {lineno}: {line.strip()[:60]!r}"
                    report.drop("malformed JSON line", example=example)
                    continue
                records.append(rec)
                line_of.append(lineno)
        table = _records_table(records)

        def locate(rows):
            return [(line_of[int(r)], None) for r in rows]

    if table.num_rows == 0:
        raise DataError("file has no records", path)
    roles = resolve_columns(table.column_names, columns, path)
    return table_to_log(table, roles, path, report, locate, on_bad_lines)


def _read_json_array(
    path: Path, columns: ColumnMap | None, on_bad_lines: OnBadLines
) -> InteractionLog:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"malformed JSON ({e})", path) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError("expected a JSON array of objects (or JSON Lines)", path)
    if not records:
        raise DataError("file has no records", path)
    table = _records_table(records)
    roles = resolve_columns(table.column_names, columns, path)

    def locate(rows):
        return [(None, int(r) + 1) for r in rows]

    return table_to_log(table, roles, path, LoadReport(str(path)), locate, on_bad_lines)


# --------------------------------------------------------------------------- public readers


def read_interactions(
    path: str | Path,
    columns: ColumnMap | None = None,
    format: str = "auto",
    sep: str | None = None,
    on_bad_lines: OnBadLines = "error",
) -> InteractionLog:
    """Read a table of interactions (CSV/TSV, Parquet, JSON Lines, RecBole) into an InteractionLog.

    ``columns=None`` recognises common names (user_id/userId/user, item_id/movieId/item,
    timestamp/time, rating, event).  Timestamps may be numbers or ISO-8601 strings.
    ``on_bad_lines="skip"`` drops malformed rows and counts them in ``log.report``.
    The format is decided by :func:`detect_format` like for :func:`read_log`; this
    reader refuses sequence-per-line files, which have no columns.
    """
    fmt = detect_format(path) if format == "auto" else format
    if fmt == "sequence":
        raise DataError("a sequence-per-line file has no columns; use read_log or read_sequences", path)
    return read_log(path, columns, format=fmt, sep=sep, on_bad_lines=on_bad_lines)


def read_sequences(path: str | Path) -> InteractionLog:
    """Read ``user item1 item2 ...`` lines (chronological, whitespace separated).

    The timestamp of an item is its position within the line (``has_time=False``);
    a user spread over several lines gets positions that continue from line to line.
    Lines holding only a user id are counted in the report.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path) from None
    # Split in Arrow rather than Python: one vectorised pass even for big files.
    lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
    lines = pc.utf8_trim_whitespace(lines)  # else split_whitespace yields "" tokens at the ends
    nonblank = np.asarray(pc.not_equal(lines, ""))
    if not nonblank.any():
        raise DataError("file is empty", path)

    odd = np.asarray(pc.fill_null(pc.match_substring_regex(lines, r'[,;"]'), False))
    if odd.any():
        line = int(np.argmax(odd)) + 1
        found = next(c for c in ',;"' if c in lines[line - 1].as_py())
        raise DataError(
            f"expected 'user item1 item2 ...' separated by spaces, found {found!r} "
            "(is this a CSV file? pass --format csv)",
            path,
            line=line,
        )

    line_no = np.nonzero(nonblank)[0] + 1
    tokens = pc.utf8_split_whitespace(lines.filter(pa.array(nonblank)))
    n_items = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64) - 1
    report = LoadReport(str(path))
    only_user = np.nonzero(n_items == 0)[0]
    report.rows_read = int(n_items.sum()) + len(only_user)
    if len(only_user):
        report.drop("user with no items", len(only_user))
        report.examples["user with no items"] = [
            f"line {line_no[i]}: user {tokens[int(i)].as_py()[0]!r}" for i in only_user[:5]
        ]
        logger.warning("%s: %d lines hold a user id but no items", path, len(only_user))

    flat = pc.list_flatten(tokens).to_numpy(zero_copy_only=False)
    first = tokens.offsets.to_numpy()[:-1].astype(np.int64)
    is_user = np.zeros(len(flat), dtype=bool)
    is_user[first] = True
    user = np.repeat(flat[first], n_items)
    item = flat[~is_user]
    # position within the line: global item index minus the index of the line's first item
    starts = np.repeat(np.cumsum(n_items) - n_items, n_items)
    timestamp = (np.arange(len(item)) - starts).astype(np.float64)
    line_users = flat[first]
    if len(np.unique(line_users.astype(str))) < len(line_users):
        # A user on several lines: positions continue across them, so the user's
        # history stays in file order instead of interleaving by position.
        _, code = np.unique(user.astype(str), return_inverse=True)
        o = np.argsort(code, kind="stable")
        group_start = np.searchsorted(code[o], code[o], side="left")
        timestamp = np.empty(len(item), dtype=np.float64)
        timestamp[o] = np.arange(len(item)) - group_start
    return InteractionLog(user, item, timestamp, report=report, has_time=False)


def _find_recbole(path: Path, ext: str = ".inter") -> Path:
    """Accept ``x.inter``, a directory holding ``<name>.inter``, or the prefix ``dir/x``."""
    if path.is_file():
        return path
    if path.is_dir():
        cands = sorted(path.glob(f"*{ext}"))
        named = path / f"{path.name}{ext}"
        if named.is_file():
            return named
        if len(cands) == 1:
            return cands[0]
        if not cands:
            raise DataError(f"no {ext} file in this directory", path)
        listed = ", ".join(c.name for c in cands)
        raise DataError(f"several {ext} files here ({listed}); name one", path)
    prefixed = path.with_name(path.name + ext)
    if prefixed.is_file():
        return prefixed
    raise DataError(f"no such file (nor {prefixed.name})", path)


def read_recbole(
    path: str | Path, columns: ColumnMap | None = None, on_bad_lines: OnBadLines = "error"
) -> InteractionLog:
    """Read a RecBole atomic ``.inter`` file (tab separated, ``name:type`` header).

    Type suffixes are stripped, and user_id / item_id / timestamp / rating are mapped
    automatically (a file without timestamps gives ``has_time=False``).
    """
    path = _find_recbole(Path(path), ".inter")
    return _read_delimited(path, columns, "\t", on_bad_lines, recbole=True)


def read_recbole_table(path: str | Path) -> pa.Table:
    """Read a RecBole ``.item`` / ``.user`` feature file into an Arrow table.

    Column names lose their type suffix; ``float`` columns become float64 and everything
    else (``token``, ``token_seq``, ``float_seq``) stays a string.  The RecBole types are
    kept in the schema metadata under ``recbole_types`` (JSON).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path)
    read = read_delimited_table(path, recbole=True)
    table = read.table
    for i, name in enumerate(table.column_names):
        if read.types[name] == "float":
            try:
                table = table.set_column(i, name, pc.cast(table[name], pa.float64()))
            except pa.ArrowInvalid as e:
                raise DataError(f"not a number ({e})", path, column=name) from None
    meta = {b"recbole_types": json.dumps(read.types).encode()}
    return table.replace_schema_metadata(meta)


def _looks_like_sequences(path: Path) -> bool:
    """A .txt file is sequence-per-line unless its first lines look delimited."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= 20:
                break
            if "," in line or ";" in line or "\t" in line:
                return False
    return True


def detect_format(path: str | Path, default: str | None = None) -> str:
    """The format ``read_log`` would use for ``path`` (one of ``FORMATS``).

    ``default`` is used for an unknown extension (``None``: a :class:`DataError`
    asking for ``--format``); the feature reader reads those as delimited text.
    """
    path = Path(path)
    if path.is_dir():
        return "recbole"
    fmt = _EXTENSIONS.get(path.suffix.lower(), default)
    if fmt is None:
        raise DataError(
            f"unknown file extension {path.suffix!r}; pass --format "
            f"(one of {', '.join(FORMATS)})",
            path,
        )
    if fmt == "txt":
        if not path.is_file():
            raise DataError("no such file", path)
        fmt = "sequence" if _looks_like_sequences(path) else "csv"
    elif fmt == "csv" and path.is_file():
        header = _first_line(path) or ""
        if "\t" in header and ":" in header.split("\t")[0]:
            fmt = "recbole"  # a RecBole "name:type" header under another extension
    return fmt


def read_log(
    path: str | Path,
    columns: ColumnMap | None = None,
    format: str = "auto",
    sep: str | None = None,
    on_bad_lines: OnBadLines = "error",
) -> InteractionLog:
    """Read any supported interaction file; the one dispatcher over the readers.

    ``format`` overrides :func:`detect_format`: one of ``csv, tsv, parquet, jsonl,
    json, sequence, recbole``.  ``sep`` applies to CSV/TSV; ``on_bad_lines`` to every
    table format.
    """
    path = Path(path)
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", path)
    logger.info("reading %s as %s", path, fmt)
    if fmt == "sequence":
        if columns is not None or sep is not None or on_bad_lines != "error":
            raise TypeError("sequence files take no column map or reader options")
        return read_sequences(path)
    if fmt == "recbole":
        return read_recbole(path, columns, on_bad_lines)
    if not path.is_file():
        raise DataError("no such file", path)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, columns, sep or ("\t" if fmt == "tsv" else None), on_bad_lines)
    if fmt == "parquet":
        return _read_parquet(path, columns, on_bad_lines)
    if fmt == "jsonl":
        return _read_jsonl(path, columns, on_bad_lines)
    with open(path, encoding="utf-8", errors="replace") as f:  # json: an array, or JSON Lines
        head = f.read(4096).lstrip()
    if head.startswith("["):
        return _read_json_array(path, columns, on_bad_lines)
    return _read_jsonl(path, columns, on_bad_lines)
