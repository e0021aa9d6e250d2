"""Item state managed through the API, laid over the bundle's catalogue.

The database's ``catalogue`` table is the source of truth (shared by every
worker); :class:`CatalogueState` is this process's copy, refreshed by the
service's sync loop. It answers the three questions every endpoint asks:
may this item be recommended now (hidden, deleted, expired), what does it look
like (name, categories, labels: the API's values override the bundle's
``items.csv``), and which items pass a category filter.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Sequence

import numpy as np
import torch

from attnrec.serving.engine import BadRequest, ModelSnapshot, remember_mask
from attnrec.serving.store import ItemState


class CatalogueState:
    def __init__(self) -> None:
        self._items: dict[str, ItemState] = {}
        self._blocked: set[str] = set()  # hidden or deleted (expiry is checked by time)
        self._expiries: list[float] = []
        self._expiring: dict[str, float] = {}
        self._categorised: dict[str, tuple[str, ...]] = {}
        self.version = 0
        self._lock = threading.Lock()
        self._dense: dict[tuple, np.ndarray] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

    # ---- updates (from the database) -----------------------------------------------------
    def apply(self, states: Sequence[ItemState]) -> bool:
        """Take newer rows; True if anything changed."""
        changed = False
        with self._lock:
            for s in states:
                old = self._items.get(s.item)
                if old is not None and old.updated_at >= s.updated_at and old == s:
                    continue
                self._items[s.item] = s
                changed = True
                if s.hidden or s.deleted:
                    self._blocked.add(s.item)
                else:
                    self._blocked.discard(s.item)
                if s.expires_at is not None:
                    self._expiring[s.item] = s.expires_at
                else:
                    self._expiring.pop(s.item, None)
                if s.categories:
                    self._categorised[s.item] = s.categories
                else:
                    self._categorised.pop(s.item, None)
            if changed:
                self._expiries = sorted(self._expiring.values())
                self.version += 1
                self._dense.clear()
                self._masks.clear()
        return changed

    # ---- questions ----------------------------------------------------------------------
    def get(self, item: str) -> ItemState | None:
        return self._items.get(item)

    def state_key(self, now: float | None = None) -> tuple[int, int]:
        """Changes whenever the set of recommendable items changes (an update or an expiry)."""
        now = time.time() if now is None else now
        return self.version, bisect.bisect_right(self._expiries, now)

    def blocked(self, item: str, now: float | None = None) -> bool:
        """Never shown: hidden, deleted or expired."""
        if item in self._blocked:
            return True
        exp = self._expiring.get(item)
        return exp is not None and exp <= (time.time() if now is None else now)

    def deleted(self, item: str) -> bool:
        s = self._items.get(item)
        return s is not None and s.deleted

    def banned(self, snap: ModelSnapshot) -> np.ndarray | None:
        """Dense ids (under ``snap``) of every blocked item, None when there are none."""
        now = time.time()
        key = (snap.version, *self.state_key(now))
        hit = self._dense.get(key)
        if hit is None:
            raws = [i for i in (*self._blocked, *self._expiring) if self.blocked(i, now)]
            hit, _ = snap.encode_items(sorted(set(raws)))
            if len(self._dense) > 8:
                self._dense.clear()
            self._dense[key] = hit
        return hit if len(hit) else None

    def describe(self, snap: ModelSnapshot, raw: str) -> dict:
        """``name, category, categories, labels, description`` (API values over the bundle's)."""
        base = snap.item_info(raw)
        s = self._items.get(raw)
        name = base.name if base else None
        description = base.description if base else None
        categories: tuple[str, ...] = (base.category,) if base and base.category else ()
        labels: tuple[str, ...] = ()
        if s is not None:
            name = s.name if s.name is not None else name
            description = s.description if s.description is not None else description
            categories = s.categories or categories
            labels = s.labels
        return {"name": name, "category": categories[0] if categories else None,
                "categories": list(categories), "labels": list(labels), "description": description}

    def allowed_mask(self, snap: ModelSnapshot, categories: Sequence[str],
                     exclude_categories: Sequence[str]) -> torch.Tensor | None:
        """Category filter over the bundle's categories and the API's (which take precedence)."""
        if not self._categorised or (not categories and not exclude_categories):
            return snap.allowed_mask(categories, exclude_categories)
        want, drop = set(categories), set(exclude_categories)
        key = (snap.version, self.version, tuple(sorted(want)), tuple(sorted(drop)))
        mask = self._masks.get(key)
        if mask is not None:
            return mask
        overlay = {c for cats in self._categorised.values() for c in cats}
        unknown = sorted((want | drop) - set(snap.category_codes) - overlay)
        if unknown:
            known = ", ".join(sorted(set(snap.category_codes) | overlay)[:20])
            raise BadRequest(f"unknown categories {unknown}; known categories include: {known}")
        codes = torch.from_numpy(snap.item_categories())
        base_want = [snap.category_codes[c] for c in want if c in snap.category_codes]
        base_drop = [snap.category_codes[c] for c in drop if c in snap.category_codes]
        mask = torch.isin(codes, torch.tensor(base_want, dtype=torch.int64)) if want else \
            torch.ones(snap.n_items + 1, dtype=torch.bool)
        if base_drop:
            mask &= ~torch.isin(codes, torch.tensor(base_drop, dtype=torch.int64))
        for raw, cats in self._categorised.items():
            d = snap.item_map.get(raw)
            if d is not None:
                c = set(cats)
                mask[d] = (not want or bool(c & want)) and not (c & drop)
        mask[0] = False
        remember_mask(self._masks, key, mask)
        return mask

    def masks(self) -> dict:
        return self._masks
