"""Request and response models, one per direction.

Every input model forbids unknown fields, so a typo is a 422 with its name,
not a silently ignored option. Size limits that depend on settings (``k``,
batch and history lengths) are checked by :func:`check_limits` in the routers
and reported the same way.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Ids are opaque strings; bounded so that a request cannot ship megabyte keys.
RawId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
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
    timestamp: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Client time in epoch seconds (optional)"
    )
    event_type: EventType | None = Field(None, description="e.g. view, purchase (optional)")


class EventBatchIn(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=HARD_MAX_LIST)


class EventAck(Strict):
    stored: int = Field(description="Events committed to the database")
    unknown_items: int = Field(description="Events whose item the current model does not know")
    unknown_users: int = Field(description="Events whose user the current model does not know")
    model_version: str


# ---- catalogue --------------------------------------------------------------------
class ItemIn(Strict):
    item: RawId
    name: Annotated[str, StringConstraints(max_length=1000)] | None = None
    category: Annotated[str, StringConstraints(max_length=256)] | None = None
    description: Annotated[str, StringConstraints(max_length=20_000)] | None = None


class ItemsIn(Strict):
    items: list[ItemIn] = Field(min_length=1, max_length=HARD_MAX_LIST)


class ItemsAdded(Strict):
    added: list[str] = Field(description="Raw ids the model can now recommend")
    model_version: str


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
    exclude_seen: bool = Field(True, description="Leave out items already in the user's history")
    exclude: list[RawId] = Field(default_factory=list, max_length=HARD_MAX_LIST,
                                 description="Items never to recommend")
    categories: list[RawId] = Field(default_factory=list, max_length=1000,
                                    description="Only recommend items of these categories")
    exclude_categories: list[RawId] = Field(default_factory=list, max_length=1000)
    explain: bool = Field(False, description="Include the history items behind each recommendation")


class SimilarQuery(Strict):
    k: int = Field(10, ge=1, le=HARD_MAX_K)
    categories: list[RawId] = Field(default_factory=list, max_length=1000)
    exclude_categories: list[RawId] = Field(default_factory=list, max_length=1000)


class SessionRequest(Strict):
    items: list[RawId] = Field(max_length=HARD_MAX_LIST,
                               description="The session's items, oldest first")
    k: int = Field(10, ge=1, le=HARD_MAX_K)
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
    description: str | None = None
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


# ---- admin -----------------------------------------------------------------------
class ReloadRequest(Strict):
    path: str | None = Field(None, min_length=1, max_length=4096,
                             description="New bundle directory; default: reload the current one")


class ModelInfo(Strict):
    version: str
    model: str
    path: str
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
