"""A synthetic shop whose true patterns are known: the default demo and test dataset.

The catalogue pairs "product" categories with "accessory" categories (shoes ->
socks, cameras -> memory cards, ...).  Every product has one matching accessory
(``Trail Running Shoe 12`` -> ``Trail Running Sock 12``) and, after a user buys
the product, the accessory follows within the next one or two events with
probability ``rule_prob``.  ``SyntheticData.rules`` returns that ground truth so
that tests can check a sequence model ranks the accessory high after the product.

Everything else is background a model has to see through: Zipf-like item
popularity, users with 1-3 preferred categories that drift over time, random
off-interest events and accessories bought on their own.  Users never consume
the same item twice, so every planted accessory is a fair (not yet seen) target.

    >>> data = generate(n_users=200, seed=0)
    >>> seqs = data.to_sequences()
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from attnrec.data.dataset import SequenceData
from attnrec.data.log import InteractionLog, LoadReport
from attnrec.data.preprocess import build_sequences

log = logging.getLogger(__name__)

# (product category, accessory category, product noun, accessory noun, product lines,
#  product blurb, accessory blurb, base price of product, base price of accessory)
_PAIRS = [
    ("shoes", "socks", "Shoe", "Sock",
     ["Trail Running", "Road Running", "Hiking", "Court", "Canvas"],
     "footwear for sport and everyday walking", "cushioned socks that fit",
     90.0, 12.0),
    ("cameras", "memory cards", "Camera", "Memory Card",
     ["Mirrorless", "Compact", "Action", "Instant", "Full Frame"],
     "digital photography camera with lens and sensor", "fast storage card for",
     600.0, 25.0),
    ("phones", "phone cases", "Phone", "Phone Case",
     ["Flagship", "Budget", "Rugged", "Foldable", "Mini"],
     "smartphone with touchscreen and mobile data", "protective shell made for",
     500.0, 20.0),
    ("books", "bookmarks", "Book", "Bookmark",
     ["Mystery", "Science Fiction", "Cookery", "History", "Poetry"],
     "paperback book to read", "page marker for readers of",
     15.0, 4.0),
    ("coffee", "mugs", "Coffee", "Mug",
     ["Ethiopian", "Colombian", "Espresso", "Decaf", "Cold Brew"],
     "roasted whole coffee beans", "ceramic drinking mug to enjoy",
     14.0, 10.0),
    ("laptops", "laptop sleeves", "Laptop", "Laptop Sleeve",
     ["Ultralight", "Gaming", "Workstation", "Student", "Convertible"],
     "portable computer with keyboard and battery", "padded carry sleeve sized for",
     1100.0, 30.0),
]
_COLOURS = ["black", "white", "red", "blue", "green", "grey", "orange", "navy"]
_ADJECTIVES = ["lightweight", "classic", "premium", "durable", "compact", "bold"]

_T0 = 1_672_531_200  # 2023-01-01T00:00:00Z, so timestamps look like real epoch seconds
_DAY = 86_400.0


@dataclass
class SyntheticData:
    """A generated shop: event log, catalogue and the planted ground truth.

    * ``log``: :class:`InteractionLog` with raw string ids (``"u45"``, ``"i123"``),
      epoch-second timestamps (strictly increasing per user) and ``event`` types.
    * ``catalogue``: ``pyarrow.Table`` with columns item_id, name, category,
      description, price (every item, including ones nobody bought).
    * ``rules``: ground truth ``{product raw id: accessory raw id}``; the accessory
      follows its product within 1-2 events with probability ``params["rule_prob"]``.
    * ``params``: the arguments ``generate`` was called with.
    """

    log: InteractionLog
    catalogue: pa.Table
    rules: dict[str, str]
    params: dict = field(default_factory=dict)

    @property
    def next_item_rules(self) -> dict[str, str]:
        return self.rules

    def item_names(self) -> dict[str, str]:
        cat = self.catalogue.to_pydict()
        return dict(zip(cat["item_id"], cat["name"]))

    def to_sequences(self) -> SequenceData:
        """Chronological per-user sequences, exactly as loading ``write``'s files gives.

        Dense ids follow sorted raw-id order; only items that occur in the log get one.
        """
        data, _ = build_sequences(self.log)
        return data

    def write(self, directory: str | Path) -> Path:
        """Write ``interactions.csv`` and ``items.csv`` as a user's own files would look."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "interactions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["user_id", "item_id", "timestamp", "event_type"])
            ts = self.log.timestamp.astype(np.int64)
            w.writerows(zip(self.log.user.tolist(), self.log.item.tolist(), ts.tolist(),
                            self.log.event.tolist()))
        cat = self.catalogue.to_pydict()
        with open(directory / "items.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            cols = ["item_id", "name", "category", "description", "price"]
            w.writerow(cols)
            w.writerows(zip(*(cat[c] for c in cols)))
        log.info("wrote %d interactions and %d items to %s", len(self.log),
                 self.catalogue.num_rows, directory)
        return directory


def _build_catalogue(n_items: int, rng: np.random.Generator):
    """Items with names, categories and descriptions; returns columns, rules, pools."""
    n_products = (n_items + 1) // 2
    n_accessories = n_items - n_products
    n_pairs = len(_PAIRS)
    rows = []  # (name, category, description, price, kind, pair, partner_row)
    for k in range(n_products):
        pair = k % n_pairs
        pcat, acat, pnoun, anoun, lines, pblurb, ablurb, pprice, aprice = _PAIRS[pair]
        number = k // n_pairs + 1
        line = lines[int(rng.integers(len(lines)))]
        colour = _COLOURS[int(rng.integers(len(_COLOURS)))]
        adj = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
        price = round(pprice * float(rng.lognormal(0.0, 0.3)), 2)
        name = f"{line} {pnoun} {number}"
        desc = f"{adj.capitalize()} {line.lower()} {pnoun.lower()} in {colour}: {pblurb}."
        rows.append([name, pcat, desc, price, "product", pair, None])
        if k < n_accessories:
            # the accessory shares line, colour and number so text similarity
            # reflects the planted pairing
            aname = f"{line} {anoun} {number}"
            adesc = (f"{anoun} in {colour}, {ablurb} {line.lower()} {pnoun.lower()}s"
                     f" such as the {name}.")
            aprice_ = round(aprice * float(rng.lognormal(0.0, 0.3)), 2)
            rows.append([aname, acat, adesc, aprice_, "accessory", pair, len(rows) - 1])
            rows[-2][6] = len(rows) - 1
    # shuffle ids so that an id says nothing about category or kind
    perm = rng.permutation(len(rows))
    raw_ids = [""] * len(rows)
    for new, old in enumerate(perm):
        raw_ids[old] = f"i{new}"
    order = np.argsort(perm)  # catalogue listed in id order
    columns = {
        "item_id": [raw_ids[r] for r in order],
        "name": [rows[r][0] for r in order],
        "category": [rows[r][1] for r in order],
        "description": [rows[r][2] for r in order],
        "price": [rows[r][3] for r in order],
    }
    kind = np.array([rows[r][4] for r in order])
    pair = np.array([rows[r][5] for r in order])
    pos = np.empty(len(rows), dtype=np.int64)
    pos[order] = np.arange(len(rows))  # row -> catalogue position
    partner = np.full(len(rows), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        if row[6] is not None:
            partner[pos[r]] = pos[row[6]]
    return columns, kind, pair, partner


def generate(
    n_users: int = 2000,
    n_items: int = 400,
    seed: int = 0,
    events_per_user: tuple[int, int] = (20, 40),
    rule_prob: float = 0.7,
    zipf_a: float = 1.0,
    drift_prob: float = 0.05,
    noise_prob: float = 0.1,
    standalone_accessory_prob: float = 0.15,
    span_days: float = 180.0,
) -> SyntheticData:
    """Generate a synthetic shop; deterministic given the arguments.

    ``rule_prob``: chance that a product's accessory follows within the next 1-2 events.
    ``zipf_a``: popularity skew (weight of the r-th most popular item ~ 1/r^a).
    ``drift_prob``: per-event chance that one of the user's preferred categories changes.
    ``noise_prob``: per-event chance of an item from a random category.
    ``standalone_accessory_prob``: chance an interest event picks an accessory directly.
    """
    if n_items < 2 or n_users < 1:
        raise ValueError("need n_items >= 2 and n_users >= 1")
    lo, hi = events_per_user
    if not 1 <= lo <= hi:
        raise ValueError(
            f"events_per_user must be (min, max) with 1 <= min <= max, got {events_per_user}")
    params = dict(n_users=n_users, n_items=n_items, seed=seed, events_per_user=(lo, hi),
                  rule_prob=rule_prob, zipf_a=zipf_a, drift_prob=drift_prob,
                  noise_prob=noise_prob, standalone_accessory_prob=standalone_accessory_prob,
                  span_days=span_days)
    rng = np.random.default_rng(seed)
    columns, kind, pair, partner = _build_catalogue(n_items, rng)
    n_pairs = len(_PAIRS)

    # Zipf popularity, randomly assigned to items; one cumulative table per
    # (pair, kind) pool so sampling is a searchsorted
    weight = 1.0 / (rng.permutation(n_items) + 1.0) ** zipf_a
    pools: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for p in range(n_pairs):
        for is_acc, name in enumerate(("product", "accessory")):
            members = np.nonzero((pair == p) & (kind == name))[0]
            if len(members):
                pools[(p, is_acc)] = (members, np.cumsum(weight[members]))
    cat_pop = rng.dirichlet(np.full(n_pairs, 2.0))  # some categories are bigger sellers

    def sample(p: int, is_acc: int, seen: set[int]) -> int | None:
        if (p, is_acc) not in pools:
            return None
        members, cum = pools[(p, is_acc)]
        for _ in range(20):  # rejection keeps popularity while avoiding repeats
            j = members[int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))]
            if j not in seen:
                return int(j)
        free = [int(j) for j in members if j not in seen]
        return free[int(rng.integers(len(free)))] if free else None

    users, items, times = [], [], []
    for u in range(n_users):
        n_events = int(rng.integers(lo, hi + 1))
        k = int(rng.integers(1, 4))
        interests = list(rng.choice(n_pairs, size=k, replace=False, p=cat_pop))
        t = _T0 + rng.uniform(0.0, span_days * _DAY)
        seen: set[int] = set()
        pending: dict[int, int] = {}  # position -> accessory scheduled there
        pos = 0
        while pos < n_events or pending:
            quick = pos in pending
            item = pending.pop(pos, None)
            if item is None:
                if rng.random() < drift_prob:
                    others = [c for c in range(n_pairs) if c not in interests]
                    interests[int(rng.integers(len(interests)))] = int(rng.choice(others))
                if rng.random() < noise_prob:
                    p = int(rng.integers(n_pairs))
                else:
                    p = int(interests[int(rng.integers(len(interests)))])
                is_acc = int(rng.random() < standalone_accessory_prob)
                item = sample(p, is_acc, seen)
                if item is None:
                    item = sample(p, 1 - is_acc, seen)
                if item is None:  # the user has exhausted these categories
                    unseen = np.setdiff1d(np.arange(n_items), list(seen))
                    if not len(unseen):
                        break
                    item = int(unseen[int(rng.integers(len(unseen)))])
                acc = partner[item]
                if kind[item] == "product" and acc >= 0 and acc not in seen \
                        and acc not in pending.values() and rng.random() < rule_prob:
                    gaps = (1, 2) if rng.random() < 0.75 else (2, 1)
                    slot = next((pos + g for g in gaps if pos + g not in pending), None)
                    if slot is not None:
                        pending[slot] = int(acc)
            if item in seen:  # a scheduled accessory bought meanwhile by chance
                pos += 1
                continue
            seen.add(item)
            # accessories follow within hours, other events within days
            t += 1.0 + rng.exponential(2 * 3600.0 if quick else 1.5 * _DAY)
            users.append(u)
            items.append(item)
            times.append(np.floor(t))
            pos += 1

    users_a = np.asarray(users, dtype=np.int64)
    items_a = np.asarray(items, dtype=np.int64)
    times_a = np.asarray(times, dtype=np.float64)
    order = np.lexsort((users_a, times_a))  # a shop's log is in time order
    item_ids = np.asarray(columns["item_id"])
    raw_users = np.char.add("u", users_a[order].astype(str))
    event_log = InteractionLog(
        user=raw_users.astype(str),
        item=item_ids[items_a[order]].astype(str),
        timestamp=times_a[order],
        event=np.full(len(order), "purchase"),
        report=LoadReport(f"synthetic(seed={seed})", rows_read=len(order)),
        has_time=True,
    )
    rules = {columns["item_id"][i]: columns["item_id"][int(partner[i])]
             for i in range(n_items) if kind[i] == "product" and partner[i] >= 0}
    log.info("generated %d events for %d users over %d items (%d planted rules)",
             len(order), n_users, n_items, len(rules))
    return SyntheticData(event_log, pa.table(columns), rules, params)
