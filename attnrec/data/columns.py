"""Column roles and value parsing shared by every interaction reader.

A reader turns a file into an Arrow table; this module decides which column
plays which role (:class:`ColumnMap`, or common names recognised), parses ids,
timestamps and ratings with Arrow, and validates the role columns into an
:class:`~attnrec.data.log.InteractionLog` (:func:`table_to_log`), pointing at the
line or row of the first bad value through the reader's :data:`Locator`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from attnrec.data.errors import DataError
from attnrec.data.log import InteractionLog, LoadReport

logger = logging.getLogger(__name__)

OnBadLines = Literal["error", "skip"]

ROLES = ("user", "item", "timestamp", "rating", "event")
# Names recognised when no ColumnMap is given (case-insensitive, first match wins).
ALIASES = {
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


def resolve_columns(available: list[str], columns: ColumnMap | None, path) -> dict[str, str]:
    """role -> column name; explicit maps must match exactly, ``None`` auto-detects."""
    if columns is None:
        lower = {c.lower(): c for c in available}
        found = {}
        for role, names in ALIASES.items():
            for name in names:
                if name in lower:
                    found[role] = lower[name]
                    break
        missing = [r for r in ("user", "item") if r not in found]
        if missing:
            looked = "; ".join(f"{r}: {', '.join(ALIASES[r])}" for r in missing)
            raise DataError(
                f"no {' or '.join(missing)} column found (looked for {looked}); "
                f"columns in the file: {', '.join(available)}. Pass a ColumnMap to name them.",
                path,
            )
        return found
    wanted = {r: getattr(columns, r) for r in ROLES if getattr(columns, r) is not None}
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


def as_string(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
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


def to_seconds(arr: pa.Array) -> np.ndarray:
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


def parse_numeric(arr: pa.Array, allow_datetime: bool) -> tuple[np.ndarray, np.ndarray]:
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
        values = to_seconds(arr)
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
                    values[idx] = to_seconds(out)
                else:
                    values[idx] = out.to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        raise DataError(f"unsupported column type {t}")
    values = np.asarray(values, dtype=np.float64)
    return values, ~np.isfinite(values)



# A locator maps 0-based data row indices to (line, row) for error messages.
Locator = Callable[[np.ndarray], list[tuple[int | None, int | None]]]


def _describe(value, role: str) -> str:
    if value is None or value == "":
        return f"empty {'user id' if role == 'user' else 'item id' if role == 'item' else role}"
    if role == "timestamp":
        return f"{value!r} is not a number or an ISO-8601 datetime"
    return f"{value!r} is not a number"


def table_to_log(
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
            cols[role] = as_string(table[names[role]])
            if role != "event":
                bad[role] = np.asarray(cols[role].is_null())
    for role in ("timestamp", "rating"):
        if role in names:
            is_time = role == "timestamp"
            values, bad[role] = parse_numeric(table[names[role]], allow_datetime=is_time)
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
