"""Core in-memory data structures: id maps, chronological sequences, evaluation sets.

Everything downstream (models, evaluation, serving) works on dense ids:
users are ``0 .. n_users-1`` and items are ``1 .. n_items`` with ``0`` reserved
for padding.  :class:`IdMap` converts back and forth so that every output a
person sees uses the raw ids from their files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PAD = 0


class IdMap:
    """Bijection between raw ids (strings) and dense integer ids.

    ``offset`` is the first dense id: 1 for items (0 is padding), 0 for users.
    Raw ids are kept as strings so that ``"007"`` and ``"7"`` stay distinct and
    round trips are exact.
    """

    def __init__(self, raw_ids: Iterable[str] = (), offset: int = 0):
        self.offset = int(offset)
        self._raw: list[str] = []
        self._index: dict[str, int] = {}
        for r in raw_ids:
            self.add(r)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, raw: object) -> bool:
        return str(raw) in self._index

    def add(self, raw: object) -> int:
        """Dense id of ``raw``, assigning the next free one if it is new."""
        key = str(raw)
        idx = self._index.get(key)
        if idx is None:
            idx = len(self._raw) + self.offset
            self._index[key] = idx
            self._raw.append(key)
        return idx

    def to_dense(self, raw: object) -> int:
        try:
            return self._index[str(raw)]
        except KeyError:
            raise KeyError(f"unknown id {raw!r}") from None

    def get(self, raw: object, default: int | None = None) -> int | None:
        return self._index.get(str(raw), default)

    def encode(self, raws: Iterable[object]) -> np.ndarray:
        return np.fromiter((self.to_dense(r) for r in raws), dtype=np.int64)

    def to_raw(self, dense: int) -> str:
        i = int(dense) - self.offset
        if i < 0 or i >= len(self._raw):
            raise KeyError(f"dense id {dense} out of range")
        return self._raw[i]

    def decode(self, dense: Iterable[int]) -> list[str]:
        return [self.to_raw(d) for d in dense]

    @property
    def raw_ids(self) -> list[str]:
        return list(self._raw)

    def to_json(self) -> dict:
        return {"offset": self.offset, "raw_ids": self._raw}

    @classmethod
    def from_json(cls, obj: dict) -> "IdMap":
        return cls(obj["raw_ids"], offset=obj["offset"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self.offset == other.offset and self._raw == other._raw

    def __repr__(self) -> str:
        return f"IdMap(n={len(self)}, offset={self.offset})"


def _csr_from_lists(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    indptr = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    flat = np.fromiter((x for s in seqs for x in s), dtype=np.int64, count=int(indptr[-1]))
    return indptr, flat


@dataclass
class SequenceData:
    """Per-user chronological item sequences in CSR layout (dense ids).

    ``items[indptr[u]:indptr[u+1]]`` is user ``u``'s history, oldest first.
    ``timestamps`` is parallel to ``items`` (or ``None`` when the source had
    no times, e.g. sequence-per-line files).
    """

    indptr: np.ndarray
    items: np.ndarray
    n_items: int
    user_map: IdMap
    item_map: IdMap
    timestamps: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.indptr = np.asarray(self.indptr, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        if self.timestamps is not None:
            self.timestamps = np.asarray(self.timestamps, dtype=np.float64)

    @classmethod
    def from_lists(
        cls,
        seqs: Sequence[Sequence[int]],
        n_items: int,
        user_map: IdMap | None = None,
        item_map: IdMap | None = None,
        timestamps: Sequence[Sequence[float]] | None = None,
    ) -> "SequenceData":
        indptr, flat = _csr_from_lists(seqs)
        ts = None
        if timestamps is not None:
            ts = np.fromiter((t for s in timestamps for t in s), dtype=np.float64, count=len(flat))
        if user_map is None:
            user_map = IdMap((str(u) for u in range(len(seqs))), offset=0)
        if item_map is None:
            item_map = IdMap((str(i) for i in range(1, n_items + 1)), offset=1)
        return cls(indptr, flat, n_items, user_map, item_map, ts)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def n_interactions(self) -> int:
        return int(self.indptr[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def sequence(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def sequences(self) -> list[np.ndarray]:
        return np.split(self.items, self.indptr[1:-1])

    def item_counts(self) -> np.ndarray:
        """Interactions per dense item id, length ``n_items + 1`` (index 0 = padding)."""
        return np.bincount(self.items, minlength=self.n_items + 1)

    def stats(self) -> dict:
        lengths = self.lengths
        n_active_items = int((self.item_counts()[1:] > 0).sum())
        pct = np.percentile(lengths, [5, 25, 50, 75, 95, 99]) if len(lengths) else np.zeros(6)
        return {
            "users": self.n_users,
            "items": n_active_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * max(1, n_active_items)),
            "seq_len_min": int(lengths.min()) if len(lengths) else 0,
            "seq_len_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "seq_len_max": int(lengths.max()) if len(lengths) else 0,
            **{f"seq_len_p{p}": float(v) for p, v in zip([5, 25, 50, 75, 95, 99], pct)},
        }


@dataclass
class EvalSet:
    """Evaluation cases: for each case a user, an input history and target item(s).

    ``histories`` and ``targets`` are CSR (indptr, items) pairs in dense ids.
    Leave-one-out has exactly one target per case; a temporal split may have many.
    """

    users: np.ndarray
    hist_indptr: np.ndarray
    hist_items: np.ndarray
    target_indptr: np.ndarray
    target_items: np.ndarray
    name: str = "test"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.users)

    def history(self, i: int) -> np.ndarray:
        return self.hist_items[self.hist_indptr[i] : self.hist_indptr[i + 1]]

    def targets(self, i: int) -> np.ndarray:
        return self.target_items[self.target_indptr[i] : self.target_indptr[i + 1]]

    def histories(self, idx: np.ndarray | slice | None = None) -> list[np.ndarray]:
        rng = range(len(self)) if idx is None else np.arange(len(self))[idx]
        return [self.history(i) for i in rng]

    @classmethod
    def from_lists(
        cls,
        users: Sequence[int],
        histories: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        name: str = "test",
    ) -> "EvalSet":
        hp, hi = _csr_from_lists(histories)
        tp, ti = _csr_from_lists(targets)
        return cls(np.asarray(users, dtype=np.int64), hp, hi, tp, ti, name=name)


@dataclass
class Split:
    """A train/validation/test protocol.

    ``train`` is what a model is fitted on for model selection, ``valid`` is
    evaluated after fitting on ``train``; ``train_full`` (train + validation
    interactions, never test) is what the final model is fitted on before
    ``test`` is evaluated.
    """

    train: SequenceData
    valid: EvalSet
    train_full: SequenceData
    test: EvalSet
    protocol: str = "leave-one-out"

    def describe(self) -> str:
        return self.protocol


def save_sequences_npz(path: str | Path, data: SequenceData) -> None:
    """Store sequences without pickle (plain arrays + JSON id maps)."""
    path = Path(path)
    arrays = {"indptr": data.indptr, "items": data.items, "n_items": np.array([data.n_items])}
    if data.timestamps is not None:
        arrays["timestamps"] = data.timestamps
    np.savez_compressed(path, **arrays)
    maps = {"user_map": data.user_map.to_json(), "item_map": data.item_map.to_json()}
    path.with_suffix(".maps.json").write_text(json.dumps(maps))


def load_sequences_npz(path: str | Path) -> SequenceData:
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        ts = z["timestamps"] if "timestamps" in z.files else None
        indptr, items, n_items = z["indptr"], z["items"], int(z["n_items"][0])
    maps = json.loads(path.with_suffix(".maps.json").read_text())
    return SequenceData(
        indptr, items, n_items, IdMap.from_json(maps["user_map"]), IdMap.from_json(maps["item_map"]), ts
    )
