"""Errors raised while reading data files, with enough context to fix the file."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A problem in an input file.

    ``str()`` reads like ``data.csv, line 17, column 'timestamp': 'abc' is not a number``
    so that the message alone says where to look.  ``line`` is 1-based and counts
    physical lines (header included); ``row`` is used instead for formats without
    lines (Parquet), also 1-based.
    """

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        column: str | None = None,
        row: int | None = None,
    ):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = None if line is None else int(line)
        self.column = column
        self.row = None if row is None else int(row)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.path is not None:
            where.append(self.path)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message
