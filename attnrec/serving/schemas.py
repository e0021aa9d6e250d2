"""Request and response models, one per direction.

Every input model forbids unknown fields, so a typo is a 422 with its name,
not a silently ignored option. Size limits that depend on settings (``k``,
batch and history lengths) are checked by :func:`check_limits` in the routers
and reported the same way.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

# Ids are opaque strings; bounded so that a request cannot ship megabyte keys.
RawId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _path_id(v: str) -> str:
    # the app keeps '/' and '%' inside a path segment percent-encoded so that routing sees
    # one segment (see app.PathSegmentMiddleware); decode them here
    v = unquote(v) if "%" in v else v
    if not 1 <= len(v) <= 256:
        raise ValueError("an id is 1 to 256 characters")
    return v


# An id in the URL path: any character, '/' included, percent-encoded (``/users/tenant%2F42``)
PathId = Annotated[str, AfterValidator(_path_id)]

# event times: epoch seconds (JSON number) or ISO-8601; earlier or later than this is a typo
EARLIEST_EVENT_TIME = 946_684_800.0  # 2000-01-01T00:00:00Z
MAX_CLOCK_SKEW_S = 86_400.0
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$")


def _event_time(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"timestamp must be epoch seconds (a JSON number) or an ISO-8601 string, got {v!r}")
    if isinstance(v, (int, float)):
        t = float(v)
    elif isinstance(v, str):
        if not _ISO.match(v.strip()):
            raise ValueError(f"timestamp {v!r} is not ISO-8601 (e.g. 2024-05-01T12:30:00Z); "
                             "send epoch seconds as a JSON number, not a string")
        try:
            d = datetime.fromisoformat(v.strip().replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"timestamp {v!r} is not a valid ISO-8601 time: {e}") from None
        if d.tzinfo is None:
            d = d.replace(tzinfo=timezone.utc)  # documented: no zone means UTC
        t = d.timestamp()
    else:
        raise ValueError(f"timestamp must be epoch seconds (a JSON number) or an ISO-8601 string, "
                         f"got {type(v).__name__}")
    latest = time.time() + MAX_CLOCK_SKEW_S
    if not EARLIEST_EVENT_TIME <= t <= latest:
        raise ValueError(f"timestamp {v!r} is outside the accepted window: from 2000-01-01T00:00:00Z "
                         "to one day after the server's current time")
    return t


EventTime = Annotated[float | str | None, BeforeValidator(_event_time)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=64)]

# hard caps independent of settings keep the OpenAPI document (and fuzzing) honest
HARD_MAX_K = 10_000
HARD_MAX_LIST = 100_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- events -------------------------------------------------------------------
class EventIn(Strict):
    user: RawId
    item: RawId
    timestamp: EventTime = Field(
        None, description="When it happened: epoch seconds (number) or ISO-8601 (no zone = UTC), "
        "2000-01-01 to now + 1 day; default: arrival time. A user's sequence is in event-time order "
        "(ties: arrival order)")
    event_type: EventType | None = Field(
        None, description="One of the declared event types (ATTNREC_EVENT_TYPES) when declared; "
        "no type = positive feedback")
    event_id: RawId | None = Field(
        None, description="Client idempotency key: an event whose event_id is already stored is "
        "acknowledged and not stored again")


class EventBatchIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=HARD_MAX_LIST)


class EventAck(Strict):
    stored: int = Field(description="Events committed to the database")
    duplicates: int = Field(0, description="Events skipped because their event_id was already stored")
    unknown_items: int = Field(description="Events whose item the current model does not know")
    unknown_users: int = Field(description="Events whose user the current model does not know")
    model_version: str


# ---- catalogue --------------------------------------------------------------------
Name = Annotated[str, StringConstraints(max_length=1000)]
Description = Annotated[str, StringConstraints(max_length=20_000)]
Tags = Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=256)]],
                 Field(max_length=100)]


class ItemIn(Strict):
    item: RawId
    name: Name | None = None
    category: Annotated[str, StringConstraints(max_length=256)] | None = None
    categories: Tags | None = Field(None, description="Several categories (overrides category)")
    labels: Tags | None = None
    description: Description | None = None
    ttl_s: float | None = Field(None, gt=0, le=10 * 365 * 86400, allow_inf_nan=False,
                                description="Hidden from recommendations this many seconds from now")


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=HARD_MAX_LIST)


class ItemsAdded(Strict):
    added: list[str] = Field(description="Raw ids the model can now recommend")
    registered: list[str] = Field(default_factory=list, description="Raw ids whose catalogue entry was stored")
    embedded: list[str] = Field(default_factory=list,
                                description="Raw ids a content-aware model embedded from their text")
    model_version: str


class ItemPatch(Strict):
    """Fields to change; the others keep their value. ``null`` clears an optional field."""

    hidden: bool | None = Field(None, description="Never recommended while true (any endpoint)")
    categories: Tags | None = None
    labels: Tags | None = None
    name: Name | None = None
    description: Description | None = None
    ttl_s: float | None = Field(None, gt=0, le=10 * 365 * 86400, allow_inf_nan=False,
                                description="Hidden from recommendations this many seconds from now")
    expires_at: EventTime = Field(None, description="Hidden from this time on (epoch seconds or ISO-8601)")


# ---- recommendations ------------------------------------------------------------
class Because(Strict):
    item: str = Field(description="History item the model attended to")
    position: int = Field(description="Position in the user's history (0 = oldest)")
    weight: float = Field(description="Share of the explanation (normalised; may be negative)")
    name: str | None = None


class Explanation(Strict):
    method: Literal["attention", "item-item weights", "popularity", "none"]
    because: list[Because]


class RecommendedItem(Strict):
    item: str
    score: float
    name: str | None = None
    category: str | None = None
    explanation: Explanation | None = None


class Recommendations(Strict):
    user: str | None = None
    source: Literal["model", "popularity-fallback"]
    model_version: str
    items: list[RecommendedItem]
    unknown_items: list[str] = Field(
        default_factory=list, description="Input items the model does not know (ignored)"
    )


class RecQuery(Strict):
    """Query parameters of ``GET /users/{user}/recommendations``."""

    k: int = Field(10, ge=1, le=HARD_MAX_K)
    offset: int = Field(0, ge=0, le=HARD_MAX_K, description="Skip this many items (paging)")
    exclude_seen: bool = Field(True, description="Leave out items already in the user's history")
    exclude: list[RawId] = Field(default_factory=list, max_length=HARD_MAX_LIST,
                                 description="Items never to recommend")
    categories: list[RawId] = Field(default_factory=list, max_length=1000,
                                    description="Only recommend items of these categories")
    exclude_categories: list[RawId] = Field(default_factory=list, max_length=1000)
    explain: bool = Field(False, description="Include the history items behind each recommendation")


class SimilarQuery(Strict):
    k: int = Field(10, ge=1, le=HARD_MAX_K)
    offset: int = Field(0, ge=0, le=HARD_MAX_K, description="Skip this many items (paging)")
    exclude: list[RawId] = Field(default_factory=list, max_length=HARD_MAX_LIST,
                                 description="Items never to recommend")
    categories: list[RawId] = Field(default_factory=list, max_length=1000)
    exclude_categories: list[RawId] = Field(default_factory=list, max_length=1000)


class SessionRequest(Strict):
    items: list[RawId] = Field(max_length=HARD_MAX_LIST,
                               description="The session's items, oldest first")
    k: int = Field(10, ge=1, le=HARD_MAX_K)
    offset: int = Field(0, ge=0, le=HARD_MAX_K, description="Skip this many items (paging)")
    exclude_seen: bool = True
    exclude: list[RawId] = Field(default_factory=list, max_length=HARD_MAX_LIST)
    categories: list[RawId] = Field(default_factory=list, max_length=1000)
    exclude_categories: list[RawId] = Field(default_factory=list, max_length=1000)
    explain: bool = False


# ---- items and users ------------------------------------------------------------
class ItemOut(Strict):
    item: str
    known_to_model: bool
    name: str | None = None
    category: str | None = None
    categories: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    description: str | None = None
    hidden: bool = False
    expires_at: float | None = None
    recommendable: bool = Field(True, description="Known to the model and not hidden, deleted or expired")
    fit_interactions: int = Field(description="Interactions of the item in the model's training data")


class UserOut(Strict):
    user: str
    known_to_model: bool
    fit_events: int
    stored_events: int
    recent_items: list[str] = Field(description="Most recent items of the sequence, newest last")


class UserDeleted(Strict):
    user: str
    deleted_events: int


class ItemDeleted(Strict):
    item: str
    deleted: bool


class Unavailable(Strict):
    detail: str
    retry_after_s: float


# ---- admin -----------------------------------------------------------------------
class ReloadRequest(Strict):
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="New bundle directory; default: reload the current one")


class ModelInfo(Strict):
    version: str
    model: str
    event_types: dict[str, float] = Field(default_factory=dict, description="Event types declared now")
    trained_event_types: dict[str, float] | None = Field(
        None, description="Event types the bundle was trained with (recorded by retraining), if known")
    n_items: int
    n_users: int
    saved_at: str | None = None
    has_catalogue: bool
    metrics: dict = Field(default_factory=dict)


class ReloadResult(Strict):
    previous_version: str
    version: str
    changed: bool


class Health(Strict):
    status: Literal["ok"]


class Readiness(Strict):
    ready: bool
    model_version: str | None = None
    database: bool
    database_detail: str | None = Field(None, description="Why the database is not healthy")
