"""The one JSON sanitiser: bundles' config.json, the service's payloads and the report's data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np


def to_jsonable(obj: Any, fallback: Callable[[Any], Any] | None = None) -> Any:
    """A copy of ``obj`` that strict JSON (``allow_nan=False``) can encode.

    Mappings get string keys; tuples, lists, sets and arrays become lists; numpy
    scalars become Python numbers; NaN and infinities become ``None`` (JSON has
    neither); paths become strings. Anything else goes to ``fallback`` (e.g.
    ``str``) or raises ``TypeError``.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, fallback) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, np.ndarray)):
        return [to_jsonable(v, fallback) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, Path):
        return str(obj)
    if fallback is not None:
        return fallback(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
