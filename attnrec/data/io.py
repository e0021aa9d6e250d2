"""Readers for interaction files: CSV/TSV, Parquet, JSON Lines, sequence-per-line, RecBole.

Every reader returns an :class:`~attnrec.data.log.InteractionLog` (raw string ids,
file order) whose ``report`` counts every row that was not kept.  Problems in a
file raise :class:`~attnrec.data.errors.DataError` naming the file, line and column.

Parsing is done by pyarrow; Python only walks the file line by line when an error
has to be located, so large files load at C speed and errors still point at a line.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from attnrec.data.errors import DataError
from attnrec.data.log import InteractionLog, LoadReport

logger = logging.getLogger(__name__)

OnBadLines = Literal["error", "skip"]
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
    ".txt": "txt",  # sequence or delimited, decided by looking at the lines
}

_ROLES = ("user", "item", "timestamp", "rating", "event")
# Names recognised when no ColumnMap is given (case-insensitive, first match wins).
_ALIASES = {
    "user": ("user_id", "user", "userid", "uid", "customer_id", "session_id", "visitorid"),
    "item": ("item_id", "item", "itemid", "iid", "movieid", "movie_id", "product_id", "asin"),
    "timestamp": ("timestamp", "time", "ts", "datetime", "date", "event_time", "unix_time"),
    "rating": ("rating", "score", "stars"),
    "event": ("event", "event_type", "action", "behavior"),
}
_NUMBER_RE = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"
_ZONE_RE = r"(Z|z|[+-]\d\d:?\d\d)$"
_ISO_RE = r"^\d{4}-\d\d-\d\d([T ]\d\d(:\d\d(:\d\d(\.\d+)?)?)?)?(Z|z|[+-]\d\d:?\d\d)?$"


@dataclass
class ColumnMap:
    """Which file column plays which role.  ``None`` means the file has no such column."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    rating: str | None = None
    event: str | None = None


# --------------------------------------------------------------------------- columns


def _resolve_columns(available: list[str], columns: ColumnMap | None, path) -> dict[str, str]:
    """role -> column name; explicit maps must match exactly, ``None`` auto-detects."""
    if columns is None:
        lower = {c.lower(): c for c in available}
        found = {}
        for role, names in _ALIASES.items():
            for name in names:
                if name in lower:
                    found[role] = lower[name]
                    break
        missing = [r for r in ("user", "item") if r not in found]
        if missing:
            looked = "; ".join(f"{r}: {', '.join(_ALIASES[r])}" for r in missing)
            raise DataError(
                f"no {' or '.join(missing)} column found (looked for {looked}); "
                f"columns in the file: {', '.join(available)}. Pass a ColumnMap to name them.",
                path,
            )
        return found
    wanted = {r: getattr(columns, r) for r in _ROLES if getattr(columns, r) is not None}
    missing = [name for name in wanted.values() if name not in available]
    if missing:
        hint = ""
        if columns.timestamp in missing:
            hint = " (use timestamp=None if the file has no times)"
        raise DataError(
            f"missing column(s) {', '.join(map(repr, missing))}; "
            f"the file has columns {', '.join(map(repr, available))}{hint}",
            path,
        )
    return wanted


# --------------------------------------------------------------------------- value parsing


def _cast_locate(arr: pa.Array, to: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Cast ``arr``; values that fail become null and are flagged in the returned mask.

    Arrow casts are all-or-nothing, so bisect to find the culprits: O(n log n) at worst
    and a single cast in the common case where everything parses.
    """
    try:
        return pc.cast(arr, to), np.zeros(len(arr), dtype=bool)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) == 1:
            return pa.nulls(1, to), np.ones(1, dtype=bool)
    mid = len(arr) // 2
    left, bad_l = _cast_locate(arr.slice(0, mid), to)
    right, bad_r = _cast_locate(arr.slice(mid), to)
    return pa.concat_arrays([left, right]), np.concatenate([bad_l, bad_r])


def _as_string(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Raw ids as trimmed strings; empty strings become null."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_floating(arr.type):
        # JSON/Parquet may store integer ids as floats; "7" not "7.0" keeps them equal to text ids
        if pc.all(pc.equal(arr, pc.floor(arr))).as_py() is not False:
            arr = pc.cast(arr, pa.int64())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, arr.type), arr)


def _to_seconds(arr: pa.Array) -> np.ndarray:
    """Timestamp/date array -> float64 epoch seconds (nulls -> NaN)."""
    if pa.types.is_date(arr.type):
        arr = pc.cast(arr, pa.timestamp("s"))
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[arr.type.unit]
    ints = pc.cast(arr, pa.int64())  # the stored UTC value, whatever the zone
    v = pc.fill_null(ints, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    # whole seconds and the fraction separately: v / 1e9 would round 0.25 s to 0.2499998
    out = (v // per_second).astype(np.float64) + (v % per_second) / per_second
    out[np.asarray(ints.is_null())] = np.nan
    return out


def _parse_numeric(arr: pa.Array, allow_datetime: bool) -> tuple[np.ndarray, np.ndarray]:
    """-> (float64 values, bad mask).  Null/empty values are reported as bad too."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    elif allow_datetime and (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        values = _to_seconds(arr)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t):
        s = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
        values = np.full(n, np.nan)
        try:
            values = pc.cast(s, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        except pa.ArrowInvalid:
            # Only values shaped like a number or an ISO datetime are cast; the rest stay
            # NaN (= bad), so bisection in _cast_locate is left with the rare odd ones.
            def matches(regex):
                return np.asarray(pc.fill_null(pc.match_substring_regex(s, regex), False))

            numeric = matches(_NUMBER_RE)
            groups = [(numeric, pa.float64())]
            if allow_datetime:
                iso, zoned = matches(_ISO_RE) & ~numeric, matches(_ZONE_RE)
                # Naive datetimes are taken as UTC; zoned ones are converted to UTC.
                groups += [
                    (iso & ~zoned, pa.timestamp("ns")),
                    (iso & zoned, pa.timestamp("ns", tz="UTC")),
                ]
            for mask, to in groups:
                idx = np.nonzero(mask)[0]
                if len(idx) == 0:
                    continue
                out, _ = _cast_locate(s.take(pa.array(idx)), to)
                if pa.types.is_timestamp(to):
                    values[idx] = _to_seconds(out)
                else:
                    values[idx] = out.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        raise DataError(f"unsupported column type {t}")
    values = np.asarray(values, dtype=np.float64)
    return values, ~np.isfinite(values)


# --------------------------------------------------------------------------- table -> log

# A locator maps 0-based data row indices to (line, row) for error messages.
Locator = Callable[[np.ndarray], list[tuple[int | None, int | None]]]


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


def _describe(value, role: str) -> str:
    if value is None or value == "":
        return f"empty {'user id' if role == 'user' else 'item id' if role == 'item' else role}"
    if role == "timestamp":
        return f"{value!r} is not a number or an ISO-8601 datetime"
    return f"{value!r} is not a number"


def _table_to_log(
    table: pa.Table,
    names: dict[str, str],
    path: Path,
    report: LoadReport,
    locate: Locator,
    on_bad_lines: OnBadLines,
) -> InteractionLog:
    """Validate the role columns of ``table`` and turn it into an InteractionLog."""
    n = table.num_rows
    report.rows_read += n
    cols: dict[str, object] = {}
    bad: dict[str, np.ndarray] = {}
    for role in ("user", "item", "event"):
        if role in names:
            cols[role] = _as_string(table[names[role]])
            if role != "event":
                bad[role] = np.asarray(cols[role].is_null())
    for role in ("timestamp", "rating"):
        if role in names:
            is_time = role == "timestamp"
            values, bad[role] = _parse_numeric(table[names[role]], allow_datetime=is_time)
            cols[role] = values

    any_bad = np.zeros(n, dtype=bool)
    for mask in bad.values():
        any_bad |= mask
    if any_bad.any():
        raw = {role: table[names[role]] for role in bad}
        if on_bad_lines == "error":
            row = int(np.argmax(any_bad))
            role = next(r for r in bad if bad[r][row])
            line, row_no = locate(np.array([row]))[0]
            value = raw[role][row].as_py()
            raise DataError(_describe(value, role), path, line=line, column=names[role], row=row_no)
        counted = np.zeros(n, dtype=bool)  # a row bad in several columns counts once
        for role, mask in bad.items():
            rows = np.nonzero(mask & ~counted)[0]
            counted |= mask
            if len(rows) == 0:
                continue
            reason = _describe(None, role) if role in ("user", "item") else f"bad {role}"
            report.drop(reason, len(rows))
            for r, (line, row_no) in zip(rows[:5], locate(rows[:5])):
                where = f"line {line}" if line is not None else f"row {row_no}"
                report.examples.setdefault(reason, []).append(
                    f"{where}: {_describe(raw[role][int(r)].as_py(), role)}"
                )
        logger.warning("%s: skipped %d rows with bad values", path, int(any_bad.sum()))
    keep = ~any_bad

    def take(role):
        v = cols[role]
        if isinstance(v, np.ndarray):
            return v[keep]
        return v.filter(pa.array(keep)).to_numpy(zero_copy_only=False)

    has_time = "timestamp" in names
    timestamp = take("timestamp") if has_time else np.arange(int(keep.sum()), dtype=np.float64)
    return InteractionLog(
        user=take("user"),
        item=take("item"),
        timestamp=timestamp,
        rating=take("rating") if "rating" in names else None,
        event=take("event") if "event" in names else None,
        report=report,
        has_time=has_time,
    )


# --------------------------------------------------------------------------- delimited text


def _first_line(path: Path) -> str | None:
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if line.strip():
                return line.rstrip("\r\n")
    return None


def _sniff_sep(path: Path, header: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab", ".inter"):
        return "\t"
    counts = {s: header.count(s) for s in (",", "\t", ";", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _read_delimited(
    path: Path,
    columns: ColumnMap | None,
    sep: str | None,
    on_bad_lines: OnBadLines,
    strip_types: bool = False,
    quoting: bool = True,
) -> InteractionLog:
    header = _first_line(path)
    if header is None:
        raise DataError("file is empty", path)
    sep = sep or _sniff_sep(path, header)
    raw_names = next(csv.reader([header], delimiter=sep)) if quoting else header.split(sep)
    raw_names = [h.strip() for h in raw_names]
    # RecBole headers carry types ("user_id:token"); roles are matched on the bare name.
    shown = [h.split(":", 1)[0] if strip_types else h for h in raw_names]
    roles = _resolve_columns(shown, columns, path)
    to_raw = dict(zip(shown, raw_names))
    roles_raw = {role: to_raw[name] for role, name in roles.items()}

    invalid: list[tuple[int, str, int, int]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number, row.text, row.expected_columns, row.actual_columns))
        return "skip" if on_bad_lines == "skip" else "error"

    wanted = list(dict.fromkeys(roles_raw.values()))
    try:
        table = pcsv.read_csv(
            path,
            # Single-threaded so that invalid rows carry their record number.
            read_options=pcsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pcsv.ParseOptions(
                delimiter=sep, quote_char='"' if quoting else False, invalid_row_handler=on_invalid
            ),
            # Everything as strings: we parse times and ratings ourselves to point at bad values.
            convert_options=pcsv.ConvertOptions(
                include_columns=wanted,
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

    report = LoadReport(str(path))
    if invalid:
        numbers = [n for n, *_ in invalid if n is not None]
        lines = _scan_lines(path, np.array(numbers))
        report.rows_read += len(invalid)
        for number, text, expected, actual in invalid:
            report.drop(
                "wrong number of fields",
                example=f"line {lines.get(number, '?')}: expected {expected} fields, "
                f"found {actual}: {text[:60]!r}",
            )
        logger.warning("%s: skipped %d malformed lines", path, len(invalid))
    if table.num_rows == 0 and not invalid:
        raise DataError("file has a header but no data rows", path)
    locate = _text_locator(path, 1, [n for n, *_ in invalid if n is not None])
    return _table_to_log(table, roles_raw, path, report, locate, on_bad_lines)


# --------------------------------------------------------------------------- parquet / json


def _read_parquet(
    path: Path, columns: ColumnMap | None, on_bad_lines: OnBadLines
) -> InteractionLog:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"not a readable Parquet file ({e})", path) from None
    roles = _resolve_columns(pf.schema_arrow.names, columns, path)
    table = pf.read(columns=list(dict.fromkeys(roles.values())))
    if table.num_rows == 0:
        raise DataError("file has no rows", path)

    def locate(rows):
        return [(None, int(r) + 1) for r in rows]

    return _table_to_log(table, roles, path, LoadReport(str(path)), locate, on_bad_lines)


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
    roles = _resolve_columns(table.column_names, columns, path)
    return _table_to_log(table, roles, path, report, locate, on_bad_lines)


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
    roles = _resolve_columns(table.column_names, columns, path)

    def locate(rows):
        return [(None, int(r) + 1) for r in rows]

    return _table_to_log(table, roles, path, LoadReport(str(path)), locate, on_bad_lines)


# --------------------------------------------------------------------------- public readers


def read_interactions(
    path: str | Path,
    columns: ColumnMap | None = None,
    format: str = "auto",
    sep: str | None = None,
    on_bad_lines: OnBadLines = "error",
) -> InteractionLog:
    """Read a table of interactions (CSV/TSV, Parquet, JSON Lines) into an InteractionLog.

    ``columns=None`` recognises common names (user_id/userId/user, item_id/movieId/item,
    timestamp/time, rating, event).  Timestamps may be numbers or ISO-8601 strings.
    ``on_bad_lines="skip"`` drops malformed rows and counts them in ``log.report``.
    """
    path = Path(path)
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
    if not path.is_file():
        raise DataError("no such file", path)
    fmt = format
    if fmt == "auto":
        fmt = _EXTENSIONS.get(path.suffix.lower(), "csv")
        if fmt == "recbole":
            return read_recbole(path, columns, on_bad_lines)
        if fmt == "txt":
            fmt = "csv"
    if fmt in ("csv", "tsv"):
        if sep is None and fmt == "tsv":
            sep = "\t"
        return _read_delimited(path, columns, sep, on_bad_lines)
    if fmt == "parquet":
        return _read_parquet(path, columns, on_bad_lines)
    if fmt == "jsonl":
        return _read_jsonl(path, columns, on_bad_lines)
    if fmt == "json":
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            return _read_json_array(path, columns, on_bad_lines)
        return _read_jsonl(path, columns, on_bad_lines)
    raise DataError(f"read_interactions cannot read format {fmt!r}; use read_log", path)


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
    return _read_delimited(path, columns, "\t", on_bad_lines, strip_types=True, quoting=False)


_RECBOLE_TYPES = {
    "token": pa.string(),
    "token_seq": pa.string(),
    "float": pa.float64(),
    "float_seq": pa.string(),
}


def read_recbole_table(path: str | Path) -> pa.Table:
    """Read a RecBole ``.item`` / ``.user`` feature file into an Arrow table.

    Column names lose their type suffix; ``float`` columns become float64 and everything
    else (``token``, ``token_seq``, ``float_seq``) stays a string.  The RecBole types are
    kept in the schema metadata under ``recbole_types`` (JSON).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", path)
    header = _first_line(path)
    if header is None:
        raise DataError("file is empty", path)
    raw = [h.strip() for h in header.split("\t")]
    names = [h.split(":", 1)[0] for h in raw]
    types = [h.split(":", 1)[1] if ":" in h else "token" for h in raw]
    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pcsv.ConvertOptions(
                column_types={h: _RECBOLE_TYPES.get(t, pa.string()) for h, t in zip(raw, types)}
            ),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"could not parse: {e}", path) from None
    table = table.rename_columns(names)
    meta = {b"recbole_types": json.dumps(dict(zip(names, types))).encode()}
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


def detect_format(path: str | Path) -> str:
    """The format ``read_log`` would use for ``path`` (one of ``FORMATS``)."""
    path = Path(path)
    if path.is_dir():
        return "recbole"
    fmt = _EXTENSIONS.get(path.suffix.lower())
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
    return fmt


def read_log(
    path: str | Path, columns: ColumnMap | None = None, format: str = "auto", **kw
) -> InteractionLog:
    """Read any supported interaction file, choosing the reader from the extension.

    ``format`` overrides detection: one of ``csv, tsv, parquet, jsonl, json, sequence,
    recbole``.  Extra keywords (``sep``, ``on_bad_lines``) go to the table readers.
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", path)
    logger.info("reading %s as %s", path, fmt)
    if fmt == "sequence":
        if columns is not None or kw:
            raise TypeError("sequence files take no column map or reader options")
        return read_sequences(path)
    if fmt == "recbole":
        return read_recbole(path, columns, on_bad_lines=kw.get("on_bad_lines", "error"))
    return read_interactions(path, columns, format=fmt, **kw)
