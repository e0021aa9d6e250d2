"""The item catalogue: display name, category and description per raw item id.

One reader for every format the feature reader accepts (RecBole ``.item``,
CSV/TSV, Parquet: :func:`attnrec.data.features.check_feature_file`). Columns are
matched by role, not by one fixed header: the id column is found like a feature
file's (``item_id``, ``id``, ``movie_id``, ``asin``, ...), the name is the first of
``name``/``title``/``movie_title``/..., the category the first of
``category``/``class``/``genre``/... . A bundle stores the catalogue as a plain
``items.csv`` (:func:`write_catalogue`: ``item_id,name,category,description``),
whatever the file it came from looked like.

File-level problems (no such file, no id column, no rows, none of the
name/category/description columns, no usable row) raise :class:`~attnrec.data.errors.DataError`, so a bad ``--items``
file fails before any training starts.  Name, category and description are each
optional, but a catalogue needs at least one of them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from attnrec.data.errors import DataError
from attnrec.data.columns import ALIASES
from attnrec.data.features import check_feature_file

ITEM_ID_COLUMNS = tuple(dict.fromkeys(("item_id", "id", *ALIASES["item"])))
NAME_COLUMNS = ("name", "title", "movie_title", "product_name", "item_name")
CATEGORY_COLUMNS = ("category", "categories", "class", "genre", "genres", "main_category")
DESCRIPTION_COLUMNS = ("description", "desc", "summary", "overview", "plot")
FIELDS = ("item_id", "name", "category", "description")


@dataclass(frozen=True)
class CatalogueEntry:
    name: str | None
    category: str | None
    description: str | None


Catalogue = dict[str, CatalogueEntry]


def _first(names: list[str], wanted: tuple[str, ...]) -> str | None:
    low = {n.lower(): n for n in names}
    return next((low[w] for w in wanted if w in low), None)


def _cells(table: pa.Table, column: str | None) -> list[str | None]:
    if column is None:
        return [None] * table.num_rows
    out = []
    for v in table.column(column).to_pylist():
        text = " ".join(map(str, v)) if isinstance(v, list) else (None if v is None else str(v).strip())
        out.append(text or None)
    return out


def read_catalogue(path: str | Path) -> Catalogue:
    """``{raw item id: CatalogueEntry}`` from a catalogue file or a bundle directory.

    A bundle without ``items.csv`` gives an empty catalogue; a file that is named
    but unusable raises :class:`DataError` saying what is wrong. The first row of
    a repeated id wins (like the feature reader).
    """

    path = Path(path)
    if path.is_dir():
        path = path / "items.csv"
        if not path.exists():
            return {}
    raw = check_feature_file(path, "item catalogue file")
    names = raw.table.column_names
    id_col = _first(names, ITEM_ID_COLUMNS)
    if id_col is None:
        raise DataError(
            f"no item id column in the catalogue (looked for {', '.join(ITEM_ID_COLUMNS)}); "
            f"columns: {', '.join(names)}", path)
    name_col, cat, desc = (_first(names, w) for w in (NAME_COLUMNS, CATEGORY_COLUMNS, DESCRIPTION_COLUMNS))
    if name_col is cat is desc is None:
        raise DataError(
            f"the item catalogue has no name, category or description column (looked for "
            f"{', '.join(NAME_COLUMNS + CATEGORY_COLUMNS + DESCRIPTION_COLUMNS)}); "
            f"columns: {', '.join(names)}", path)
    out: Catalogue = {}
    for rid, name, category, description in zip(
        _cells(raw.table, id_col), _cells(raw.table, name_col), _cells(raw.table, cat), _cells(raw.table, desc)
    ):
        if rid is not None and rid not in out:
            out[rid] = CatalogueEntry(name, category, description)
    if not out:
        raise DataError(f"every row of the item catalogue has an empty {id_col!r}", path)
    return out


def write_catalogue(catalogue: Catalogue, path: str | Path) -> Path:
    """Write ``catalogue`` as ``items.csv`` (``item_id,name,category,description``)."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for rid, e in catalogue.items():
            w.writerow([rid, e.name or "", e.category or "", e.description or ""])
    return path
