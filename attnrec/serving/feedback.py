"""What an event means: the declared event types and their weights (one rule, one place).

``ATTNREC_EVENT_TYPES='{"purchase": 3, "view": 1, "dislike": -1, "impression": 0}'``:

* weight > 0, **positive**: the item joins the user's sequence (what the model reads);
* weight < 0, **negative**: the item is never recommended to that user again;
* weight = 0, **exclude only**: the item is not recommended to that user again while
  ``exclude_seen`` is on (the default), and does not join the sequence.

An event without ``event_type`` is positive (weight 1). With no types declared every
event is positive and any ``event_type`` is accepted (stored as given); once types are
declared, an undeclared one is refused (422). Stored events whose type is not (or no longer) declared count
as positive, so changing the declaration never silently drops history.
"""

from __future__ import annotations

from enum import Enum
from typing import Mapping


class Kind(str, Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    EXCLUDE = "exclude"


class EventTypes:
    def __init__(self, weights: Mapping[str, float] | None = None):
        self.weights = dict(weights or {})

    @property
    def declared(self) -> bool:
        return bool(self.weights)

    def kind(self, event_type: str | None) -> Kind:
        w = self.weights.get(event_type) if event_type is not None else None
        if w is None or w > 0:
            return Kind.POSITIVE
        return Kind.NEGATIVE if w < 0 else Kind.EXCLUDE

    def is_positive(self, event_type: str | None) -> bool:
        """Whether the event joins the sequence (and is trained on as a positive interaction)."""
        return self.kind(event_type) is Kind.POSITIVE

    def weight(self, event_type: str | None) -> float:
        """Weight for retraining: the declared one, 1 for undeclared or missing types."""
        w = self.weights.get(event_type) if event_type is not None else None
        return 1.0 if w is None else float(w)

    def check(self, event_type: str | None) -> str | None:
        """The problem with ``event_type`` under this declaration, or None if it is accepted."""
        if not self.declared or event_type is None:
            return None
        if event_type not in self.weights:
            return (f"unknown event_type {event_type!r}; declared types: "
                    f"{', '.join(sorted(self.weights))}")
        return None
