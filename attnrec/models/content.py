"""Content-aware item representations: cold-start items are recommendable.

* :class:`ContentSASRec` (``"sasrec-content"``): SASRec whose item embedding is

      e_i = m_i * g(n_i) * id_i + content(i)

  ``content(i)`` is a small tower over the item's text embedding (sentence
  encoder, :mod:`attnrec.data.text`), categorical tokens (embedding bags),
  standardised numbers and precomputed vectors; ``n_i`` its training count,
  ``g`` a learned sigmoid gate of ``log(1 + n_i)`` and ``m_i = [n_i >= min_count]``.
  During training the id part of a random ``item_dropout`` fraction of items is
  switched off per batch (as in DropoutNet), so the content tower alone must
  place an item well; an item never seen in training therefore still gets a
  meaningful embedding, the same one used for input and output.
  Items without training interactions are left out of the training softmax
  (nothing says they are bad).

* :class:`TextSimilarity` (``"text-sim"``): the pure content baseline; an item's
  score is the cosine between its text embedding and a recency-weighted mean of
  the user's last items' embeddings.

Both read the item catalogue given as ``item_features`` (any file
:func:`attnrec.data.features.load_features` reads, or an Arrow table via
:meth:`set_item_features`). Catalogue items without interactions become
recommendable after ``fit``, and :meth:`add_items` adds or re-describes items
of a trained model without retraining (what the service calls).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn as nn
import torch.nn.functional as F

from attnrec.data.dataset import EvalSet, SequenceData
from attnrec.data.features import FeatureSchema, FeatureTable, load_features
from attnrec.models.base import Recommender, register
from attnrec.models.capabilities import Capability, Explanation
from attnrec.models.sasrec import SASRec
from attnrec.models.sasrec_net import SASRecConfig, SASRecNet
from attnrec.training import ValidationMetric

log = logging.getLogger(__name__)

CatalogueRows = pa.Table | Sequence[Mapping[str, Any]]


# --------------------------------------------------------------------------- content inputs
class ContentTower(nn.Module):
    """Fixed per-item content (buffers indexed by dense id) -> ``(n_rows, d)`` vectors."""

    def __init__(self, d: int, spec: dict):
        super().__init__()
        self.spec = spec
        n = spec["n_rows"]
        self.register_buffer("text", torch.zeros(n, spec["text_dim"]))
        self.register_buffer("numeric", torch.zeros(n, spec["n_numeric"]))
        self.cat_names = list(spec["cats"])
        self.vec_names = list(spec["vecs"])
        for j, (name, (vocab, width)) in enumerate(spec["cats"].items()):
            self.register_buffer(f"cat{j}", torch.zeros(n, width, dtype=torch.long))
        for j, (name, dim) in enumerate(spec["vecs"].items()):
            self.register_buffer(f"vec{j}", torch.zeros(n, dim))
        self.text_proj = nn.Linear(spec["text_dim"], d) if spec["text_dim"] else None
        self.num_proj = nn.Linear(spec["n_numeric"], d) if spec["n_numeric"] else None
        self.cat_emb = nn.ModuleList(
            nn.EmbeddingBag(vocab + 1, d, mode="mean", padding_idx=0)
            for vocab, _ in spec["cats"].values())
        self.vec_proj = nn.ModuleList(nn.Linear(dim, d) for dim in spec["vecs"].values())
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        for m in self.modules():  # small init, like the id embeddings it is added to
            if isinstance(m, (nn.Linear, nn.EmbeddingBag)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_rows(self, text: np.ndarray | None, table: FeatureTable) -> None:
        """(Re)load the buffers from the feature table (grows them to its size)."""
        n = table.n_rows

        def put(name: str, value: np.ndarray, dtype=torch.float32) -> None:
            setattr(self, name, torch.tensor(np.asarray(value), dtype=dtype))  # a copy

        if self.spec["text_dim"]:
            put("text", text)
        put("numeric", table.numeric if self.spec["n_numeric"] else np.zeros((n, 0)))
        for j, (name, (_, width)) in enumerate(self.spec["cats"].items()):
            a = table.categorical[name][:, :width]
            a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
            put(f"cat{j}", a, torch.long)
        for j, name in enumerate(self.vec_names):
            put(f"vec{j}", table.vectors[name])
        self.spec["n_rows"] = n

    def forward(self) -> torch.Tensor:
        n = self.numeric.shape[0]
        h = torch.zeros(n, self.mlp[1].in_features, device=self.numeric.device)
        if self.text_proj is not None:
            h = h + self.text_proj(self.text)
        if self.num_proj is not None:
            h = h + self.num_proj(self.numeric)
        for j, emb in enumerate(self.cat_emb):
            h = h + emb(getattr(self, f"cat{j}"))  # mean of the item's tokens (0 = none)
        for j, proj in enumerate(self.vec_proj):
            h = h + proj(getattr(self, f"vec{j}"))
        return h + self.mlp(h)  # (n, d)


def content_spec(table: FeatureTable, text_dim: int, use: Sequence[str] | None = None) -> dict:
    """Sizes of the tower's inputs (stored in bundles to rebuild the module)."""
    def on(kind: str) -> bool:
        return use is None or kind in use

    return {
        "n_rows": table.n_rows,
        "text_dim": int(text_dim) if on("text") else 0,
        "n_numeric": len(table.numeric_names) if on("numeric") else 0,
        "cats": {c: [len(table.schema.vocab[c]), max(1, int(table.categorical[c].shape[1]))]
                 for c in table.schema.names("categorical", "multi") if on("categorical")},
        "vecs": {c: int(table.vectors[c].shape[1]) for c in table.vectors
                 if on("vector") and table.vectors[c].shape[1]},
    }


class _ContentMixin:
    """Catalogue handling shared by the content models: features, text, new items."""

    def set_item_features(self, source) -> "_ContentMixin":
        """Use ``source`` (path or Arrow table) as the catalogue instead of ``item_features``."""
        self._catalogue = source
        return self

    def _encoder(self):
        from attnrec.data.text import TextEncoder

        return TextEncoder(self.text_model, cache_dir=self.text_cache, progress=False)

    def _load_catalogue(self, data: SequenceData) -> tuple[FeatureTable, pa.Table | None]:
        source = getattr(self, "_catalogue", None)
        source = self.item_features if source is None else source
        if source is None:
            from attnrec.data.features import FeatureReport

            log.warning("%s got no item_features (catalogue file) nor set_item_features(table): "
                        "no content, so new items cannot be placed", type(self).__name__)
            return FeatureTable.allocate(FeatureSchema("item_id", []), data.item_map,
                                         FeatureReport("none")), None
        table = load_features(source, data.item_map, kinds=self.feature_kinds)
        new_rows = None
        if table.report.unknown_ids:
            # catalogue items nobody interacted with yet: added after fitting
            from attnrec.data.features import read_feature_table

            raw = read_feature_table(source).table
            ids = pa.array([str(x) for x in raw.column(table.schema.id_column).to_pylist()])
            keep = pc.is_in(ids, value_set=pa.array(table.report.unknown_ids))
            new_rows = raw.filter(keep)
        return table, new_rows

    def _text_matrix(self, table: FeatureTable, rows: Sequence[int] | None = None) -> np.ndarray:
        texts = table.texts(self.text_columns)
        idx = np.arange(table.n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
        want = [texts[i] for i in idx]
        out = np.zeros((len(idx), 0), np.float32)
        if any(want):
            out = self._encoder().encode(want)
            empty = np.array([not t for t in want])
            out[empty] = 0.0  # no text: no text signal (not the embedding of "")
        return out

    def _own_item_map(self) -> None:
        """Copy the id map before adding items: it is shared with the caller's data and splits."""
        if getattr(self, "_owns_item_map", False):
            return
        from attnrec.data.dataset import IdMap

        self.item_map_ = IdMap(self.item_map_.raw_ids, offset=self.item_map_.offset)
        self.train_data_ = dataclasses.replace(self.train_data_, item_map=self.item_map_)
        self.features_.id_map = self.item_map_
        self._owns_item_map = True

    def _grow_common(self, n_new_total: int) -> None:
        """Extend counts and the fit data to ``n_new_total`` items after :meth:`add_items`."""
        extra = n_new_total - self.n_items_
        if extra > 0:
            self.item_counts_ = np.concatenate([self.item_counts_, np.zeros(extra, np.float32)])
            self.n_items_ = n_new_total
            self.train_data_.n_items = n_new_total


# --------------------------------------------------------------------------- SASRec + content
class ContentSASRecNet(SASRecNet):
    """SASRec network whose item table mixes gated id embeddings with a content tower."""

    def __init__(self, cfg: SASRecConfig, spec: dict, min_count: int, item_dropout: float):
        super().__init__(cfg)
        d = cfg.attention.d_model
        self.content = ContentTower(d, spec)
        self.gate_a = nn.Parameter(torch.tensor(1.0))
        self.gate_b = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("counts", torch.zeros(spec["n_rows"]))
        self.min_count = min_count
        self.item_dropout = item_dropout
        self._table: torch.Tensor | None = None

    def grow(self, n_rows: int) -> None:
        """Room for new items: zero id embeddings (gated off anyway) and zero counts."""
        extra = n_rows - self.item_emb.num_embeddings
        if extra <= 0:
            return
        w = self.item_emb.weight.data
        self.item_emb = nn.Embedding(n_rows, w.shape[1], padding_idx=0)
        self.item_emb.weight.data = torch.cat([w, torch.zeros(extra, w.shape[1])])
        self.counts = torch.cat([self.counts, torch.zeros(extra)])
        self.cfg.n_items = n_rows - 1

    def item_table(self) -> torch.Tensor:
        """``(n_items + 1, d)`` item embeddings (row 0 = padding = 0)."""
        keep = (self.counts >= self.min_count).float()  # (V+1,)
        if self.training and self.item_dropout > 0:
            keep = keep * (torch.rand_like(keep) >= self.item_dropout).float()
        gate = torch.sigmoid(self.gate_a * torch.log1p(self.counts) + self.gate_b) * keep
        e = gate[:, None] * self.item_emb.weight + self.content()  # (V+1, d)
        pad = torch.ones(e.shape[0], 1, device=e.device)
        pad[0] = 0.0
        return e * pad

    def output_weight(self) -> torch.Tensor:
        # the same sampled item table as the inputs of this training step
        return self._table if (self.training and self._table is not None) else self.item_table()

    def embed(self, seq: torch.Tensor) -> torch.Tensor:
        table = self.item_table()  # (V + 1, d), item dropout re-drawn per training step
        self._table = table if self.training else None
        return table[seq]  # (B, T, d)


@register("sasrec-content")
class ContentSASRec(_ContentMixin, SASRec):
    """SASRec with content-aware item embeddings (cold-start items get content-only vectors).

    Content hyperparameters: ``item_features`` (catalogue file), ``feature_kinds``
    (column -> kind overrides), ``text_columns`` (columns joined into the encoded
    text; default the text columns), ``text_model`` / ``text_cache`` (encoder),
    ``use_features`` (subset of text/categorical/numeric/vector; None = all),
    ``min_count`` (training interactions before the id embedding is used),
    ``item_dropout`` (fraction of items trained content-only per batch). All
    SASRec hyperparameters apply; only the ``"ce"`` loss is supported (computed
    over items with training interactions).
    """

    capabilities = SASRec.capabilities | {Capability.ADD_ITEMS}
    smoke_params: ClassVar[dict[str, Any]] = dict(d_model=16, n_heads=1, n_layers=1, max_len=16,
                                                  epochs=2)
    #: SASRec's network, batching and optimiser defaults before issue 12 (d_model 64, left-aligned
    #: positions, batches of 128 windows, lr 1e-3, no weight decay, weight average or label
    #: smoothing): the cold-start figures of this model were measured with them and it has not
    #: been re-tuned with SASRec's newer defaults
    content_defaults: ClassVar[dict[str, Any]] = {"d_model": 64, "align": "left", "batch_targets": None,
                                                  "weight_decay": 0.0, "ema_decay": None,
                                                  "label_smoothing": 0.0, "lr": 1e-3}

    def __init__(self, item_features: str | None = None, feature_kinds: dict | None = None,
                 text_columns: list | None = None, text_model: str = "all-MiniLM-L6-v2",
                 text_cache: str | None = None, use_features: list | None = None,
                 min_count: int = 1, item_dropout: float = 0.1, **sasrec_params: Any):
        super().__init__(**{**self.content_defaults, **sasrec_params})
        self.item_features = item_features
        self.feature_kinds = feature_kinds
        self.text_columns = text_columns
        self.text_model = text_model
        self.text_cache = text_cache
        self.use_features = use_features
        self.min_count = min_count
        self.item_dropout = item_dropout

    # ---- construction ----------------------------------------------------
    def _build(self, n_items: int) -> ContentSASRecNet:
        if self.loss != "ce":
            raise ValueError("sasrec-content supports loss='ce' only")
        cfg = dataclasses.replace(self._net_config(n_items), shared_embeddings=True, sparse_grad=False)
        net = ContentSASRecNet(cfg, dict(self.content_spec_), self.min_count, self.item_dropout)
        if getattr(self, "_fit_inputs", None) is not None:
            table, text, counts = self._fit_inputs
            net.content.set_rows(text, table)
            net.counts = torch.as_tensor(counts, dtype=torch.float32)
        return net

    def _fit(self, data: SequenceData, valid: EvalSet | None, metric: ValidationMetric | None) -> None:
        self._owns_item_map = False
        table, new_rows = self._load_catalogue(data)
        text = self._text_matrix(table) if self.use_features is None or \
            "text" in self.use_features else np.zeros((table.n_rows, 0), np.float32)
        self.features_ = table
        self.content_spec_ = content_spec(table, text.shape[1], self.use_features)
        self._fit_inputs = (table, text, data.item_counts().astype(np.float32))
        try:
            super()._fit(data, valid, metric)
        finally:
            self._fit_inputs = None
        if new_rows is not None and new_rows.num_rows:
            added = self.add_items(new_rows)
            log.info("%d catalogue item(s) without interactions are recommendable by content",
                     len(added))

    def _loss(self, h: torch.Tensor, tgt: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        W = self.net_.output_weight()  # (V + 1, d)
        logits = (h @ W.T).float()  # (N, V + 1)
        out = (self.net_.counts == 0)[None, :].expand_as(logits)  # padding and items without training events
        if seen is not None:  # loss_excludes_seen (padding 0 is out already); a row's target stays in
            out = out.clone().scatter_(1, seen, True)
            out[torch.arange(len(tgt)), tgt] = False
        logits = logits.masked_fill(out, float("-inf"))
        eps = self._label_smoothing_value()
        if not eps:
            return F.cross_entropy(logits, tgt)
        # label smoothing over the items this loss ranks (those with training events; F.cross_entropy
        # would spread it over the masked ones too, whose log-probability is -inf)
        logp = torch.log_softmax(logits, dim=1)  # (N, V + 1)
        uniform = -logp.masked_fill(out, 0.0).sum(1) / (~out).sum(1)  # (N,) mean over the allowed items
        nll = -logp.gather(1, tgt[:, None])[:, 0]  # (N,)
        return ((1 - eps) * nll + eps * uniform).mean()

    # ---- new items -------------------------------------------------------
    def add_items(self, rows: CatalogueRows) -> list[int]:
        """Add (or re-describe) catalogue rows; returns their dense ids. No retraining.

        New ids get content-only embeddings (their id embedding is gated off
        until they have ``min_count`` training interactions in a later fit).
        """
        self._check_fitted()
        self._own_item_map()
        enc = self.features_.schema.encode(rows)
        written = self.features_.update(enc, add_unknown=True)
        if not written:
            return []
        n_rows = self.features_.n_rows
        self.net_.grow(n_rows)
        text = self.net_.content.text.numpy()
        if self.content_spec_["text_dim"]:
            text = np.concatenate([text, np.zeros((n_rows - len(text), text.shape[1]),
                                                  np.float32)])
            text[written] = self._text_matrix(self.features_, written)
        self.net_.content.set_rows(text, self.features_)
        self.content_spec_["n_rows"] = n_rows
        self._grow_common(n_rows - 1)
        log.info("added/updated %d item(s); catalogue now %d items", len(written), self.n_items_)
        return written

    # ---- persistence -----------------------------------------------------
    def _extra_config(self) -> dict[str, Any]:
        extra = super()._extra_config()
        extra["content_spec"] = self.content_spec_
        extra["feature_schema"] = self.features_.schema.to_json()
        return extra

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        super()._load_extra_config(extra)
        self.content_spec_ = extra["content_spec"]
        schema = FeatureSchema.from_json(extra["feature_schema"])
        from attnrec.data.features import FeatureReport

        # raw cell text of old items is not stored; encodings live in the weights
        self.features_ = FeatureTable.allocate(schema, self.item_map_, FeatureReport("bundle"))
        self.features_.present[self.item_map_.offset:] = True

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super()._load_state_tensors(tensors)
        # re-materialise the feature arrays from the stored buffers so add_items can extend them
        c = self.net_.content
        self.features_.numeric = c.numeric.numpy().copy()
        for j, name in enumerate(c.cat_names):
            self.features_.categorical[name] = getattr(c, f"cat{j}").numpy().copy()
        for j, name in enumerate(c.vec_names):
            self.features_.vectors[name] = getattr(c, f"vec{j}").numpy().copy()


def _merged_signature(cls: type, base: type) -> inspect.Signature:
    own = [p for p in inspect.signature(cls.__init__).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in own}
    inherited = [p for n, p in inspect.signature(base.__init__).parameters.items()
                 if n != "self" and n not in names]
    return inspect.Signature(own + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                                    for p in inherited])


# get_params / bundles see every hyperparameter, SASRec's included
ContentSASRec.__init__.__signature__ = _merged_signature(ContentSASRec, SASRec)


# --------------------------------------------------------------------------- text baseline
@register("text-sim")
class TextSimilarity(_ContentMixin, Recommender):
    """Pure content baseline: cosine of item text embeddings to the recent history's mean.

    The last ``last_n`` history items are averaged with weights ``decay ** age``
    (most recent = 1). Needs no interactions at all, so it ranks cold items.
    The score is a sum of one term per history position, which is its explanation.
    """

    capabilities = frozenset({Capability.EXPLAIN, Capability.ADD_ITEMS, Capability.SIMILAR_ITEMS})
    explain_method = "text similarity"
    light_scoring = True

    def __init__(self, item_features: str | None = None, feature_kinds: dict | None = None,
                 text_columns: list | None = None, text_model: str = "all-MiniLM-L6-v2",
                 text_cache: str | None = None, last_n: int = 10, decay: float = 0.8):
        self.item_features = item_features
        self.feature_kinds = feature_kinds
        self.text_columns = text_columns
        self.text_model = text_model
        self.text_cache = text_cache
        self.last_n = last_n
        self.decay = decay

    def _fit(self, data: SequenceData, valid: Any = None, metric: Any = None) -> None:
        self._owns_item_map = False
        table, new_rows = self._load_catalogue(data)
        self.features_ = table
        self.item_text_ = torch.from_numpy(self._text_matrix(table))
        if new_rows is not None and new_rows.num_rows:
            self.add_items(new_rows)

    def add_items(self, rows: CatalogueRows) -> list[int]:
        self._check_fitted()
        self._own_item_map()
        written = self.features_.update(self.features_.schema.encode(rows), add_unknown=True)
        if written:
            n_rows = self.features_.n_rows
            text = self.item_text_
            text = torch.cat([text, torch.zeros(n_rows - len(text), text.shape[1])])
            text[written] = torch.from_numpy(self._text_matrix(self.features_, written))
            self.item_text_ = text
            self._grow_common(n_rows - 1)
        return written

    def _recent(self, history: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        """Positions of the last ``last_n`` items and their weights ``decay ** age``."""
        positions = np.arange(max(0, len(history) - self.last_n), len(history))
        w = torch.tensor(self.decay ** np.arange(len(positions))[::-1].copy(), dtype=torch.float32)
        return positions, w

    @torch.no_grad()
    def _score(self, histories: list[np.ndarray], users: np.ndarray | None = None) -> torch.Tensor:
        E = self.item_text_  # (V + 1, D), rows L2-normalised (or zero)
        q = torch.zeros(len(histories), E.shape[1])
        for b, h in enumerate(histories):
            positions, w = self._recent(h)
            if len(positions):
                q[b] = (w[:, None] * E[torch.from_numpy(h[positions])]).sum(0)
        s = q @ E.T  # (B, V + 1)
        # tiny popularity prior only breaks exact ties
        return s + 1e-6 * torch.log1p(torch.from_numpy(np.asarray(self.item_counts_, np.float32)))

    @torch.no_grad()
    def explain_items(self, histories, items, users=None) -> list[list[Explanation]]:
        self._check_fitted()
        E = self.item_text_
        out = []
        for h, rec in zip(histories, items):
            h = np.asarray(h, dtype=np.int64)
            positions, w = self._recent(h)
            rec_t = torch.from_numpy(np.asarray(rec, dtype=np.int64))
            C = (w[:, None] * (E[torch.from_numpy(h[positions])] @ E[rec_t].T)).double().numpy()  # (n, k)
            total = np.abs(C).sum(axis=0)
            C = C / np.where(total > 0, total, 1.0)
            out.append([Explanation.over(self.explain_method, h, positions, C[:, j]) for j in range(len(rec))])
        return out

    @torch.no_grad()
    def similar_scores(self, items) -> torch.Tensor:
        self._check_fitted()
        E = self.item_text_
        s = E[torch.from_numpy(np.asarray(items, dtype=np.int64))] @ E.T
        s[:, 0] = float("-inf")
        return s

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {"item_text": self.item_text_}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.item_text_ = tensors["item_text"]

    def _extra_config(self) -> dict[str, Any]:
        return {"feature_schema": self.features_.schema.to_json()}

    def _load_extra_config(self, extra: dict[str, Any]) -> None:
        from attnrec.data.features import FeatureReport

        schema = FeatureSchema.from_json(extra["feature_schema"])
        self.features_ = FeatureTable.allocate(schema, self.item_map_, FeatureReport("bundle"))
