"""Data layer: reading interaction files and turning them into dense sequences."""

from attnrec.data.dataset import (
    EvalSet,
    IdMap,
    SequenceData,
    Split,
    load_sequences_npz,
    save_sequences_npz,
)
from attnrec.data.errors import DataError
from attnrec.data.columns import ColumnMap
from attnrec.data.readers import (
    FORMATS,
    detect_format,
    read_interactions,
    read_log,
    read_recbole,
    read_recbole_table,
    read_sequences,
)
from attnrec.data.log import InteractionLog, LoadReport
from attnrec.data.preprocess import (
    PreprocessConfig,
    PreprocessReport,
    build_sequences,
    dataset_stats,
    format_stats,
    load_dataset,
)

__all__ = [
    "ColumnMap",
    "DataError",
    "EvalSet",
    "FORMATS",
    "IdMap",
    "InteractionLog",
    "LoadReport",
    "PreprocessConfig",
    "PreprocessReport",
    "SequenceData",
    "Split",
    "build_sequences",
    "dataset_stats",
    "detect_format",
    "format_stats",
    "load_dataset",
    "load_sequences_npz",
    "read_interactions",
    "read_log",
    "read_recbole",
    "read_recbole_table",
    "read_sequences",
    "save_sequences_npz",
]
