"""The optional capabilities a model can declare, and the values they return.

Beyond ``fit`` / ``score`` / ``recommend`` / ``save`` (every model), a model
*declares* what else it can do in ``Recommender.capabilities``; callers ask
``model.supports(Capability.X)`` and never probe attributes. A capability the
model does not declare is refused with :class:`CapabilityError`, which names
the model and the capability. The conformance suite
(``tests/models/test_conformance.py``) checks every declared capability and
every refusal, for every registered model.

========================  =====================================================
capability                methods (on ``Recommender``)
========================  =====================================================
``EXPLAIN``               ``explain_items(histories, items, users)``: one
                          :class:`Explanation` per recommended item
``VECTORS``               ``item_vectors()``, ``query_vectors(histories)``:
                          ``scores = query @ items.T`` (FAISS retrieval)
``ATTENTION``             ``attention_maps(histories)`` -> :class:`AttentionMaps`
                          (per-layer maps, ``causal`` flag, rollout)
``REFIT``                 ``refit_params()``, ``training_summary()``: early
                          stopping on validation, then a refit on train + valid
``ADD_ITEMS``             ``add_items(rows)``: new catalogue items without retraining
``SIMILAR_ITEMS``         ``similar_scores(items)``: a real item-item similarity
``WARM_START``            ``warm_start_from(fitted)``: the next ``fit`` starts from
                          a fitted model's weights (fine-tuning; item rows
                          matched by raw id, new items freshly initialised)
========================  =====================================================

The popularity fallback is not optional: every model scores an empty history
with :func:`attnrec.models.base.popularity_scores` (see ``Recommender.score``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch


class Capability(str, enum.Enum):
    EXPLAIN = "explain"
    VECTORS = "vectors"
    ATTENTION = "attention"
    REFIT = "refit"
    ADD_ITEMS = "add_items"
    SIMILAR_ITEMS = "similar_items"
    WARM_START = "warm_start"


#: the methods a model must implement for each capability it declares
CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    Capability.EXPLAIN: ("explain_items",),
    Capability.VECTORS: ("item_vectors", "query_vectors"),
    Capability.ATTENTION: ("attention_maps",),
    Capability.REFIT: ("refit_params", "training_summary"),
    Capability.ADD_ITEMS: ("add_items",),
    Capability.SIMILAR_ITEMS: ("similar_scores",),
    Capability.WARM_START: ("warm_start_from",),
}


class CapabilityError(TypeError):
    """A capability was used on a model that does not declare it."""

    def __init__(self, model_name: str, capability: Capability, hint: str = ""):
        self.model_name = model_name
        self.capability = capability
        super().__init__(f"model {model_name!r} does not declare the {capability.value!r} capability"
                         + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class Explanation:
    """Why one item was recommended: a weight per history position.

    ``positions`` index the history (0 = oldest), ``items`` are the history's
    items there, ``weights`` their shares (``sum(|weights|) <= 1``; what a
    share means is the model's ``method``). No positions: the recommendation
    rests on nothing in the history (e.g. popularity).
    """

    method: str
    positions: np.ndarray
    items: np.ndarray
    weights: np.ndarray

    @classmethod
    def over(cls, method: str, history: np.ndarray, positions: np.ndarray, weights: np.ndarray
             ) -> "Explanation":
        positions = np.asarray(positions, dtype=np.int64)
        return cls(method, positions, np.asarray(history, dtype=np.int64)[positions],
                   np.asarray(weights, dtype=np.float64))

    @classmethod
    def empty(cls, method: str) -> "Explanation":
        z = np.zeros(0, np.int64)
        return cls(method, z, z, np.zeros(0))

    def strongest(self, n: int) -> list[tuple[int, int, float]]:
        """Up to ``n`` ``(position, item, weight)`` with nonzero weight, largest weight first."""
        order = np.argsort(-self.weights, kind="stable")[:n]
        return [(int(self.positions[j]), int(self.items[j]), float(self.weights[j]))
                for j in order if self.weights[j] != 0]


def item_item_explanations(method: str, history: np.ndarray, contributions: np.ndarray,
                           distinct: np.ndarray) -> list[Explanation]:
    """Explanations of a score that is a sum of item-item terms (EASE, kNN, text similarity).

    ``contributions[h, j]``: the term history item ``distinct[h]`` adds to the
    score of recommended item ``j`` — exactly what the score sums, so the split
    is faithful. Each distinct item is reported at its latest position; weights
    are shares of ``sum |terms|``.
    """
    history = np.asarray(history, dtype=np.int64)
    latest = {int(i): p for p, i in enumerate(history.tolist())}
    pos = np.array([latest[int(i)] for i in distinct], dtype=np.int64)
    total = np.abs(contributions).sum(axis=0)
    W = contributions / np.where(total > 0, total, 1.0)
    return [Explanation.over(method, history, pos, W[:, j]) for j in range(contributions.shape[1])]


@dataclass
class AttentionMaps:
    """Self-attention of a batch of histories, as a model computed it.

    ``layers[l]``: ``(B, H, T, T)`` weights (query x key, right-padded).
    History ``b`` occupies positions ``0 .. lengths[b] - 1`` (its last
    ``lengths[b]`` items, oldest first). ``extra`` positions follow it (BERT4Rec's
    appended ``[MASK]``: 1; SASRec: 0); the row that scores the candidates is
    the last real position, ``lengths[b] + extra - 1``. ``causal``: a position
    attends only to itself and earlier ones (SASRec) or to both directions
    (BERT4Rec) — the model declares it.
    """

    layers: list[torch.Tensor]
    lengths: torch.Tensor
    causal: bool
    extra: int = 0

    def offset(self, b: int, history_length: int) -> int:
        """History position of the first item the model sees."""
        return history_length - int(self.lengths[b])

    def history_maps(self, b: int) -> list[torch.Tensor]:
        """Per layer ``(H, n, n)`` over history ``b``'s visible items only."""
        n = int(self.lengths[b])
        return [w[b, :, :n, :n] for w in self.layers]

    def rollout(self, b: int) -> torch.Tensor:
        """Attention rollout (Abnar & Zuidema, ACL 2020) over every real position of history ``b``.

        Per layer the heads are averaged and the residual connection accounted
        for, ``A_l = 0.5 * mean_h(W_l,h) + 0.5 * I`` (rows renormalised); the
        product ``A_L ... A_1`` says how much each input position flows into each
        position's final state. ``(n + extra, n + extra)``.
        """
        n = int(self.lengths[b]) + self.extra
        eye = torch.eye(n)
        R = eye
        for W in self.layers:
            A = 0.5 * W[b, :, :n, :n].float().mean(0) + 0.5 * eye  # (n, n)
            R = (A / A.sum(-1, keepdim=True)) @ R
        return R

    def query_weights(self, b: int, method: str = "rollout") -> np.ndarray:
        """Weights over history ``b``'s visible items (sum 1) of the row that scores every item.

        ``"rollout"``: that row of :meth:`rollout`; ``"last"``: the last layer's
        row, averaged over heads (ignores what earlier layers mixed in).
        """
        n = int(self.lengths[b])
        if n == 0:
            return np.zeros(0)
        q = n + self.extra - 1
        if method == "rollout":
            row = self.rollout(b)[q, :n]
        elif method == "last":
            row = self.layers[-1][b, :, q, :n].float().mean(0)
        else:
            raise ValueError(f"method must be 'rollout' or 'last', got {method!r}")
        return (row / row.sum()).double().numpy()
