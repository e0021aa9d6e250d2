"""Paths and dataset loading shared by the scripts in ``benchmarks/``.

The scripts are run as ``python benchmarks/<name>.py`` from an installed checkout
(``make install`` installs attnrec in editable mode), so they import this module
like any other part of attnrec and need no ``sys.path`` edits. It is not part of
the public API: it only spares each script its own path arithmetic.

The real datasets live outside the repository (they are never copied into it):
``$ATTNREC_SHARED_DATA`` when set, else ``../shared/data`` next to the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from attnrec.data.dataset import SequenceData, Split

#: the repository root (benchmarks/ and RESULTS.md live below it)
REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: interaction file of each shared dataset, relative to :func:`shared_data`
DATASETS = {
    "beauty": "beauty.txt",
    "ml-100k": "ml-100k/ml-100k.inter",
}


def shared_data() -> Path:
    """The folder holding the real datasets."""
    env = os.environ.get("ATTNREC_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def dataset_path(name: str) -> Path:
    """The interaction file of shared dataset ``name`` (a key of :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    path = shared_data() / DATASETS[name]
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the shared datasets are outside the repository "
            "(set ATTNREC_SHARED_DATA to the folder that holds them)")
    return path


def side_file(name: str, suffix: str) -> Path:
    """A side-information file next to a dataset's interactions, e.g. ``side_file("ml-100k", ".item")``."""
    return dataset_path(name).with_suffix(suffix)


def load(name_or_path: str | Path) -> SequenceData:
    """Sequences of a shared dataset (by name) or of any interaction file, read by the library loader."""
    from attnrec.data.preprocess import load_dataset

    key = str(name_or_path)
    path = dataset_path(key) if key in DATASETS else Path(key)
    return load_dataset(path)[0]


def load_split(name_or_path: str | Path) -> tuple[SequenceData, Split]:
    """``(data, leave-one-out split)``: the protocol every Beauty figure in RESULTS.md uses."""
    from attnrec.data.splits import leave_one_out

    data = load(name_or_path)
    return data, leave_one_out(data)
