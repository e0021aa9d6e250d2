"""Target attention ranker (DIN, Zhou et al. KDD 2018) as the second stage of a pipeline.

:class:`DINNet` scores a candidate ``c`` for a history ``h_1..h_L``: an
activation unit (MLP over ``[h_j, c, h_j - c, h_j * c]``) gives each history
item a weight, softmax-normalised over the history, so the interest vector
``v_c = sum_j w_j h_j`` is specific to the candidate. ``[v_c, c, v_c * c, last,
last * c, mean(h), user]`` then goes through a small MLP to a logit. Item
vectors are id embeddings plus (optionally) the content tower of
:mod:`attnrec.models.content` over categorical/numeric/text features; user
features (age, gender, ...) are optional too.

The first layer of the activation unit is applied without materialising the
``(B, N, L, 4d)`` input: ``W [h, c, h-c, h*c] = (W1 + W3) h + (W2 - W3) c + W4 (h*c)``.

:class:`TwoStage` (``"two-stage"``) is the Recommender: any attnrec model
(``first_stage``, e.g. ``"ease"`` or ``"sasrec"``) retrieves the top
``n_candidates`` unseen items; the ranker reorders them. Scores keep full
ranking semantics: reranked candidates come first, everything else keeps the
first-stage order below them, so :func:`attnrec.evaluation.evaluate` works
unchanged. The ranker is trained listwise on the first stage's own candidates
(softmax over the true next item and sampled top-N negatives) at the last
``train_positions`` positions of every training sequence. The final order of
candidates is ``z(ranker) + blend * z(first stage)`` (``z`` = standardised per
request); with validation data ``blend`` is chosen on it (``inf`` = keep the
first stage's order, so a ranker that does not help is switched off, honestly
reported in ``blend_``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.models.base import Recommender, get_model_class, register
from attnrec.models.capabilities import Capability, Explanation
from attnrec.models.neural import TrainedModel
from attnrec.ranking import exclusion_mask, top_k
from attnrec.training import ValidationMetric

log = logging.getLogger(__name__)

BLEND_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf)


class DINNet(nn.Module):
    """Candidate-specific attention over the history -> one logit per candidate."""

    def __init__(self, n_items: int, d: int = 64, max_len: int = 50, att_hidden: int = 16,
                 mlp_hidden: Sequence[int] = (128, 64), dropout: float = 0.2,
                 item_spec: dict | None = None, user_spec: dict | None = None):
        super().__init__()
        from attnrec.models.content import ContentTower

        self.d = d
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, d)  # 0 = most recent
        self.item_content = ContentTower(d, item_spec) if item_spec else None
        self.user_tower = ContentTower(d, user_spec) if user_spec else None
        self.att1 = nn.Linear(4 * d, att_hidden)
        self.att2 = nn.Linear(att_hidden, 1)
        hidden = list(mlp_hidden)
        self.fc_in = nn.Linear(7 * d, hidden[0])  # over [v, c, v*c, last*c, last, mean, user]
        layers, width = [nn.ReLU(), nn.Dropout(dropout)], hidden[0]
        for hsz in hidden[1:]:
            layers += [nn.Linear(width, hsz), nn.ReLU(), nn.Dropout(dropout)]
            width = hsz
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.05)

    def train(self, mode: bool = True) -> "DINNet":
        self._tables = None  # cached item/user tables are only valid for frozen weights
        return super().train(mode)

    def _cached(self, key: str, fn):
        # at inference the content towers over the whole catalogue are computed once, not per request
        if self.training:
            return fn()
        if getattr(self, "_tables", None) is None:
            self._tables = {}
        if key not in self._tables:
            self._tables[key] = fn()
        return self._tables[key]

    def item_table(self) -> torch.Tensor:
        def build():
            e = self.item_emb.weight
            return e + self.item_content() if self.item_content is not None else e

        return self._cached("item", build)  # (V + 1, d)

    def forward(self, hist: torch.Tensor, cand: torch.Tensor, users: torch.Tensor | None = None):
        """``hist`` (B, L) left-padded ids (most recent last), ``cand`` (B, N) ids ->
        ``(logits (B, N), attention weights (B, N, L))``."""
        table = self.item_table()
        B, L = hist.shape
        valid = hist > 0  # (B, L)
        pos = torch.arange(L - 1, -1, -1, device=hist.device).clamp(max=self.pos_emb.num_embeddings - 1)
        h = self.drop(table[hist] + self.pos_emb(pos)[None])  # (B, L, d)
        h = h * valid[..., None]
        c = table[cand]  # (B, N, d)
        d = self.d
        W, b = self.att1.weight, self.att1.bias  # (a, 4d)
        W1, W2, W3, W4 = W[:, :d], W[:, d:2 * d], W[:, 2 * d:3 * d], W[:, 3 * d:]
        N, a = c.shape[1], W.shape[0]
        # laid out (B, N, a, L): the h*c term is one batched matmul of (c * W4) with h
        cross = torch.bmm((c[:, :, None, :] * W4).reshape(B, N * a, d), h.transpose(1, 2))
        pre = cross.view(B, N, a, L) + (h @ (W1 + W3).T + b).transpose(1, 2)[:, None] \
            + (c @ (W2 - W3).T)[..., None]  # (B, N, a, L)
        e = torch.einsum("bnal,a->bnl", torch.relu(pre), self.att2.weight[0]) + self.att2.bias
        e = e.masked_fill(~valid[:, None, :], float("-inf"))
        w = torch.nan_to_num(torch.softmax(e, dim=-1), nan=0.0)  # empty history: all zero
        v = torch.einsum("bnl,bld->bnd", w, h)  # (B, N, d) candidate-specific interest
        n_valid = valid.sum(1, keepdim=True).clamp(min=1)
        mean = h.sum(1) / n_valid  # (B, d)
        last = h[:, -1]  # (B, d), zero for an empty history
        u = torch.zeros(B, d, device=h.device)
        if self.user_tower is not None and users is not None:
            known = users >= 0
            u = self._cached("user", self.user_tower)[users.clamp(min=0)] * known[:, None]
        # first MLP layer block by block: per-user parts are projected once, not per candidate
        Wv, Wc, Wvc, Wlc, Wl, Wm, Wu = self.fc_in.weight.split(d, dim=1)
        per_user = last @ Wl.T + mean @ Wm.T + u @ Wu.T + self.fc_in.bias  # (B, h)
        z = v @ Wv.T + c @ Wc.T + (v * c) @ Wvc.T + (last[:, None] * c) @ Wlc.T + per_user[:, None]
        return self.mlp(z).squeeze(-1), w


def pad_left(histories: Sequence[np.ndarray], max_len: int) -> torch.Tensor:
    """Last ``max_len`` items of each history, left-padded (most recent in the last column)."""
    T = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.zeros((len(histories), T), dtype=np.int64)
    for i, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-T:]
        if len(h):
            out[i, T - len(h):] = h
    return torch.from_numpy(out)


def _z(x: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Standardise each row over its ``ok`` entries."""
    n = ok.sum(1, keepdim=True).clamp(min=1)
    xm = torch.where(ok, x, torch.zeros_like(x))
    mean = xm.sum(1, keepdim=True) / n
    var = (torch.where(ok, x - mean, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / (var.sqrt() + 1e-6)


@register("two-stage")
class TwoStage(TrainedModel):
    """First-stage retrieval (any attnrec model) + DIN target-attention reranking of its top-N.

    ``first_stage`` / ``first_stage_params``: the retrieval model by registry name.
    Ranker: ``d_model``, ``max_len``, ``att_hidden``, ``mlp_hidden``, ``dropout``;
    training: ``train_positions`` (last positions per user used as examples),
    ``train_negatives`` (first-stage candidates sampled per example) and the
    training options (``epochs``, ``batch_size``, ``lr``, ``patience``, ...: the
    fields of :attr:`TrainConfig`). ``blend``: weight of the standardised
    first-stage score (None = choose on validation, 1.0 without it).
    ``item_features`` / ``user_features``: optional side information files.
    """

    sequential = True
    capabilities = TrainedModel.capabilities | {Capability.EXPLAIN}
    explain_method = "target attention"
    smoke_params: ClassVar[dict[str, Any]] = dict(n_candidates=20, d_model=16, max_len=8, epochs=1,
                                                  train_positions=2, mlp_hidden=[16])

    @dataclass
    class TrainConfig(TrainedModel.TrainConfig):
        """The ranker's training defaults (the fields are hyperparameters too)."""

        epochs: int = 20
        batch_size: int = 256
        patience: int | None = 3

    def __init__(self, first_stage: str = "ease", first_stage_params: dict | None = None,
                 n_candidates: int = 100, d_model: int = 64, max_len: int = 50,
                 att_hidden: int = 16, mlp_hidden: list | None = None, dropout: float = 0.2,
                 train_positions: int = 20, train_negatives: int = 30, blend: float | None = None,
                 item_features: str | None = None, user_features: str | None = None,
                 feature_kinds: dict | None = None, user_feature_kinds: dict | None = None,
                 exclude_history: bool = True, **train_options: Any):
        self.first_stage = first_stage
        self.first_stage_params = first_stage_params
        self.n_candidates = n_candidates
        self.d_model = d_model
        self.max_len = max_len
        self.att_hidden = att_hidden
        self.mlp_hidden = mlp_hidden
        self.dropout = dropout
        self.train_positions = train_positions
        self.train_negatives = train_negatives
        self.blend = blend
        self.item_features = item_features
        self.user_features = user_features
        self.feature_kinds = feature_kinds
        self.user_feature_kinds = user_feature_kinds
        self.exclude_history = exclude_history
        self._set_train_options(train_options)

    # ---- pieces ----------------------------------------------------------
    def _new_first(self) -> Recommender:
        return get_model_class(self.first_stage)().set_params(**(self.first_stage_params or {}))

    def _new_net(self) -> DINNet:
        return DINNet(self.n_items_, self.d_model, self.max_len, self.att_hidden,
                      tuple(self.mlp_hidden or (128, 64)), self.dropout,
                      self.item_spec_, self.user_spec_)

    def _side_information(self, data: SequenceData) -> None:
        from attnrec.data.features import load_features
        from attnrec.models.content import content_spec

        self.item_spec_ = self.user_spec_ = None
        self._item_table = self._user_table = None
        if self.item_features:
            t = load_features(self.item_features, data.item_map, kinds=self.feature_kinds)
            self.item_spec_ = content_spec(t, 0, ("categorical", "numeric", "vector"))
            self._item_table = t
        if self.user_features:
            t = load_features(self.user_features, data.user_map, kinds=self.user_feature_kinds)
            self.user_spec_ = content_spec(t, 0, ("categorical", "numeric", "vector"))
            self._user_table = t

    def refit_params(self) -> dict[str, Any]:
        """For the refit on train+valid: the ranker's, the first stage's refit settings, the chosen blend."""
        fs = dict(self.first_stage_params or {})
        if self.first_.supports(Capability.REFIT):
            fs.update(self.first_.refit_params())
        return {**super().refit_params(), "first_stage_params": fs, "blend": self.blend_}

    def candidates(self, histories: Sequence[np.ndarray], users: np.ndarray | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First-stage ``(scores (B, V+1), top-N ids (B, N), their scores)``; id 0 = none."""
        with torch.no_grad():
            s = self.first_.score(histories, users).float()
        masked = s.masked_fill(exclusion_mask(histories, s.shape[1], self.exclude_history),
                               float("-inf"))
        idx, vals = top_k(masked, self.n_candidates)
        return s, idx, vals

    # ---- fitting ---------------------------------------------------------
    def _fit(self, data: SequenceData, valid: EvalSet | None, metric: ValidationMetric | None) -> None:
        torch.manual_seed(self.seed)
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        first = self._new_first()
        has_refit = first.supports(Capability.REFIT)
        if has_refit and valid is not None and len(valid):
            first.fit(data, valid, metric)
        else:
            first.fit(data)
        self.first_ = first
        self._side_information(data)
        self.net_ = self._new_net()
        if self._item_table is not None:
            self.net_.item_content.set_rows(None, self._item_table)
        if self._user_table is not None:
            self.net_.user_tower.set_rows(None, self._user_table)

        # training examples: (user, position of the target) at the last train_positions positions
        ex_u, ex_p = [], []
        for u in range(data.n_users):
            a, b = int(data.indptr[u]), int(data.indptr[u + 1])
            for p in range(max(a + 1, b - self.train_positions), b):
                ex_u.append(u)
                ex_p.append(p)
        ex_u, ex_p = np.asarray(ex_u, np.int64), np.asarray(ex_p, np.int64)
        if not len(ex_p):
            raise ValueError("no training examples: every sequence has fewer than 2 items")
        prefixes = [data.items[data.indptr[u]:p] for u, p in zip(ex_u, ex_p)]
        targets = torch.from_numpy(data.items[ex_p])
        cand = np.zeros((len(ex_p), self.n_candidates), np.int64)
        for s in range(0, len(ex_p), 1024):
            _, idx, _ = self.candidates(prefixes[s:s + 1024], ex_u[s:s + 1024])
            cand[s:s + len(idx), : idx.shape[1]] = idx.numpy()
        cand_t = torch.from_numpy(cand)
        hist_all = [np.asarray(h[-self.max_len:]) for h in prefixes]
        users_t = torch.from_numpy(ex_u)
        recall = float((cand_t == targets[:, None]).any(1).float().mean())
        log.info("ranker: %d training examples, first-stage recall@%d on them %.3f",
                 len(ex_p), self.n_candidates, recall)
        net, bs, k = self.net_, self.batch_size, self.train_negatives

        def batches(epoch: int, rng: np.random.Generator):
            order = rng.permutation(len(ex_p))
            for s in range(0, len(order), bs):
                sel = order[s : s + bs]
                cols = torch.from_numpy(rng.choice(self.n_candidates, size=min(k, self.n_candidates),
                                                   replace=False))
                yield (pad_left([hist_all[i] for i in sel], self.max_len),
                       targets[sel], cand_t[sel][:, cols], users_t[sel])

        def loss_fn(module, batch) -> torch.Tensor:
            hist, tgt, neg, users = batch
            ids = torch.cat([tgt[:, None], neg], dim=1)  # positive in column 0
            logits, _ = module(hist, ids, users if self.user_spec_ else None)
            bad = (ids == 0) | ((ids == tgt[:, None]) & (torch.arange(ids.shape[1]) > 0))
            return F.cross_entropy(logits.masked_fill(bad, float("-inf")),
                                   torch.zeros(len(tgt), dtype=torch.long))

        evaluate_fn, vcache = None, None
        if self._validates(valid, metric):
            vcache = self._candidate_cache(valid)

            def evaluate_fn() -> float:
                return self._cached_metric(vcache, 0.0, metric)

        self._train(net, batches, loss_fn, evaluate_fn, metric)
        self.ranker_train_recall_ = recall
        if self.blend is not None:
            self.blend_ = float(self.blend)
        elif vcache is not None:
            # the ranker's logits do not depend on the blend: compute them once
            vcache["ranker"] = self.ranker_scores(vcache["hist"], vcache["idx"], vcache["users"])
            scores = {b: self._cached_metric(vcache, b, metric) for b in BLEND_GRID}
            self.blend_ = max(scores, key=lambda b: (scores[b], -b if math.isfinite(b) else -1e9))
            self.blend_scores_ = scores
            log.info("blend on validation (%s): %s -> %s", metric.name,
                     {str(b): round(v, 4) for b, v in scores.items()}, self.blend_)
        else:
            self.blend_ = 1.0

    def _candidate_cache(self, es: EvalSet) -> dict:
        hist = es.histories()
        out = {"hist": hist, "users": es.users, "targets": [es.targets(i) for i in range(len(es))],
               "idx": [], "vals": []}
        for s in range(0, len(es), 1024):
            _, idx, vals = self.candidates(hist[s:s + 1024], es.users[s:s + 1024])
            out["idx"].append(idx)
            out["vals"].append(vals)
        out["idx"], out["vals"] = torch.cat(out["idx"]), torch.cat(out["vals"])
        return out

    @torch.no_grad()
    def _cached_metric(self, c: dict, blend: float, metric: ValidationMetric) -> float:
        """``metric`` of the reranked validation candidates (no first-stage rescoring)."""
        order = self._rerank(c["hist"], c["users"], c["idx"], c["vals"], blend, c.get("ranker"))
        ranks = []
        for b, t in enumerate(c["targets"]):
            pos = {int(i): r + 1 for r, i in enumerate(order[b].tolist()) if i}
            ranks.append(np.array([pos.get(int(x), np.inf) for x in t], dtype=float))
        return float(metric.of_ranks(ranks))

    # ---- inference -------------------------------------------------------
    @torch.no_grad()
    def ranker_scores(self, histories, cand: torch.Tensor, users=None, chunk: int = 128
                      ) -> torch.Tensor:
        """Ranker logits ``(B, N)`` for candidate ids ``cand``."""
        if self.net_.training:
            self.net_.eval()
        out = []
        for s in range(0, len(histories), chunk):
            u = None
            if self.user_spec_ and users is not None:
                u = torch.as_tensor(np.asarray(users[s:s + chunk], dtype=np.int64))
            out.append(self.net_(pad_left(histories[s:s + chunk], self.max_len),
                                 cand[s:s + chunk], u)[0])
        return torch.cat(out) if out else torch.zeros(0, cand.shape[1])

    def _blended(self, histories, users, idx, vals, blend, ranker=None) -> torch.Tensor:
        ok = idx > 0
        if math.isinf(blend):
            r = vals.clone()
        else:
            if ranker is None:
                ranker = self.ranker_scores(histories, idx, users)
            r = _z(ranker, ok)
            if blend:
                r = r + blend * _z(vals.masked_fill(~ok, 0.0), ok)
        return r.masked_fill(~ok, float("-inf"))

    def _rerank(self, histories, users, idx, vals, blend, ranker=None) -> torch.Tensor:
        r = self._blended(histories, users, idx, vals, blend, ranker)
        o = torch.sort(r, dim=1, descending=True, stable=True).indices
        return idx.gather(1, o)

    @torch.no_grad()
    def _score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        s, idx, vals = self.candidates(histories, users)
        r = self._blended(histories, users, idx, vals, self.blend_)  # (B, N)
        out = s.clone()
        finite = torch.isfinite(out)
        # everything else keeps its first-stage order, strictly below the reranked candidates
        row_max = torch.where(finite, out, torch.full_like(out, -1e30)).amax(1, keepdim=True)
        out = torch.where(finite, out - row_max - 1.0, out)
        rmin = torch.where(torch.isfinite(r), r, torch.full_like(r, 1e30)).amin(1, keepdim=True)
        cand_score = torch.where(torch.isfinite(r), r - rmin + 1.0, torch.full_like(r, float("-inf")))
        ok = idx > 0
        rows = torch.arange(len(histories))[:, None].expand_as(idx)
        out[rows[ok], idx[ok]] = cand_score[ok]
        out[:, 0] = float("-inf")
        return out

    @torch.no_grad()
    def _target_attention(self, history: np.ndarray, items: Sequence[int], user: int | None
                          ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The ranker on ``items``: visible history, logits ``(N,)``, attention ``(N, L)``."""
        h = np.asarray(history, dtype=np.int64)[-self.max_len:]
        u = torch.tensor([user]) if (user is not None and self.user_spec_) else None
        if self.net_.training:
            self.net_.eval()
        cand = torch.as_tensor(np.asarray(items, dtype=np.int64))[None]
        logit, w = self.net_(pad_left([h], self.max_len), cand, u)
        return h, logit[0], (w[0, :, -len(h):] if len(h) else w[0, :, :0])

    def explain_items(self, histories, items, users=None) -> list[list[Explanation]]:
        """Per recommended item: the ranker's target attention over the last ``max_len`` items."""
        self._check_fitted()
        out = []
        for b, (history, rec) in enumerate(zip(histories, items)):
            if len(rec) == 0:
                out.append([])
                continue
            user = None if users is None else int(users[b])
            h, _, w = self._target_attention(history, rec, user)
            positions = np.arange(len(history) - len(h), len(history))
            out.append([Explanation.over(self.explain_method, history, positions, w[j].double().numpy())
                        for j in range(len(rec))])
        return out

    def explain(self, history: np.ndarray, item: int, user: int | None = None) -> dict:
        """Why ``item`` for ``history``: the ranker's attention over the last ``max_len`` items."""
        self._check_fitted()
        h, logit, w = self._target_attention(history, [int(item)], user)
        weights = w[0].numpy() if len(h) else np.zeros(0)
        return {"item": int(item), "score": float(logit[0]), "history": h.tolist(),
                "weights": weights.tolist(),
                "top": [int(h[j]) for j in np.argsort(-weights, kind="stable")[:5]]}

    # ---- persistence -----------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"first.{k}": v for k, v in self.first_._state_tensors().items()}
        out.update({f"ranker.{k}": v for k, v in self.net_.state_dict().items()})
        return out

    def _extra_config(self) -> dict[str, Any]:
        return {**super()._extra_config(), "first_extra": self.first_._extra_config(),
                "blend": self.blend_, "item_spec": self.item_spec_, "user_spec": self.user_spec_}

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        super()._load_extra_config(extra)
        self.blend_ = float(extra["blend"])
        self.item_spec_, self.user_spec_ = extra.get("item_spec"), extra.get("user_spec")
        first = self._new_first()
        for attr in ("n_items_", "item_map_", "user_map_", "train_data_", "item_counts_"):
            setattr(first, attr, getattr(self, attr))
        first._load_extra_config(extra.get("first_extra", {}))
        self.first_ = first

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.first_._load_state_tensors({k[6:]: v for k, v in tensors.items()
                                         if k.startswith("first.")})
        self.net_ = self._new_net()
        self.net_.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("ranker.")})
        self.net_.eval()
