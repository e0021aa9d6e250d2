"""The raw interaction log: what loaders return, before ids are densified."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadReport:
    """What happened while reading a file: nothing is dropped without being counted here."""

    source: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few "line N: ..." samples

    def drop(self, reason: str, count: int = 1, example: str | None = None) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        if example is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(example)

    @property
    def rows_kept(self) -> int:
        return self.rows_read - sum(self.dropped.values())

    def summary(self) -> str:
        parts = [f"{self.source}: {self.rows_read} rows read"]
        for reason, n in self.dropped.items():
            parts.append(f"{n} dropped ({reason})")
        return ", ".join(parts)


@dataclass
class InteractionLog:
    """Columns of raw interactions, one entry per event, in file order.

    ``user`` and ``item`` hold raw ids as strings (numpy object or str arrays);
    ``timestamp`` is float64 seconds (or the position within the user's line for
    sequence files); ``rating`` and ``event`` are optional.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray | None = None
    event: np.ndarray | None = None
    report: LoadReport = field(default_factory=lambda: LoadReport("<memory>"))
    has_time: bool = True  # False when timestamps are only positions

    def __len__(self) -> int:
        return len(self.user)
