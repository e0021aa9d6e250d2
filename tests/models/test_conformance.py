"""One contract, every model: each registered recommender must pass these."""

import json

import numpy as np
import pytest
import torch

from attnrec.data.splits import leave_one_out
from attnrec.models.base import (
    Capability,
    CapabilityError,
    Explanation,
    Recommender,
    available_models,
    get_model_class,
    popularity_scores,
)
from attnrec.models.capabilities import CAPABILITY_METHODS

MODELS = available_models()


@pytest.fixture(scope="module")
def split(small_synthetic):
    return leave_one_out(small_synthetic.to_sequences())


def _quick(name):
    """The model with settings that fit in about a second (neural models: few epochs, small width)."""
    cls = get_model_class(name)
    params = dict(getattr(cls, "smoke_params", {}))
    defaults = cls().get_params()
    for key, value in {"epochs": 2, "d_model": 16, "progress": False}.items():
        if key in defaults:
            params.setdefault(key, value)
    return cls().set_params(**params)


@pytest.fixture(scope="module")
def offline_text(tmp_path_factory):
    """Content models encode text with a bag-of-words stand-in (no model download)."""
    from attnrec.data.text import TextEncoder
    from attnrec.models.content import _ContentMixin
    from tests.models.test_cold_start import bow

    cache = tmp_path_factory.mktemp("emb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_ContentMixin, "_encoder",
                   lambda self: TextEncoder("bow", cache_dir=cache, encode_fn=bow, progress=False))
        yield


@pytest.fixture(scope="module")
def fitted(split, small_synthetic, offline_text):
    models = {}
    for name in MODELS:
        model = _quick(name)
        if model.supports(Capability.ADD_ITEMS):  # content models: describe the catalogue
            model.set_item_features(small_synthetic.catalogue)
        models[name] = model.fit(split.train_full)
    return models


@pytest.mark.parametrize("name", MODELS)
def test_constructor_only_stores_hyperparameters(name):
    model = get_model_class(name)()
    assert not [a for a in vars(model) if a.endswith("_")], "learned state before fit"
    params = model.get_params()
    assert get_model_class(name)(**params).get_params() == params
    with pytest.raises(ValueError, match="no hyperparameter"):
        model.set_params(not_a_parameter=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.recommend([np.array([1])], k=3)


@pytest.mark.parametrize("name", MODELS)
def test_fit_returns_self_and_scores_whole_catalogue(name, split):
    model = _quick(name)
    assert model.fit(split.train_full) is model
    hist = [split.test.history(i) for i in range(5)]
    s = model.score(hist)
    assert s.shape == (5, split.train_full.n_items + 1)
    assert s.dtype == torch.float32
    assert torch.isneginf(s[:, 0]).all()
    assert torch.isfinite(s[:, 1:]).all()


@pytest.mark.parametrize("name", MODELS)
def test_recommend_excludes_history_and_given_items(name, fitted, split):
    model = fitted[name]
    hist = [split.test.history(i) for i in range(10)]
    ids, scores = model.recommend(hist, k=10)
    assert ids.shape == (10, 10)
    for h, row in zip(hist, ids):
        assert not set(row.tolist()) & set(h.tolist())
        assert 0 not in row
    assert (np.diff(scores, axis=1) <= 0).all(), "scores must be sorted"
    banned = [row[:3] for row in ids]
    ids2, _ = model.recommend(hist, k=10, exclude=banned)
    for b, row in zip(banned, ids2):
        assert not set(b.tolist()) & set(row.tolist())
    n = split.train_full.n_items
    big, _ = model.recommend(hist[:1], k=n + 5)
    assert (big[0] == 0).sum() == 5 + len(set(hist[0].tolist())), "only real candidates, padded with 0"


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_identical_scores(name, fitted, split, tmp_path):
    model = fitted[name]
    path = model.save(tmp_path / name, metrics={"NDCG@10": 0.5})
    files = sorted(p.name for p in path.iterdir())
    assert "config.json" in files and "weights.safetensors" in files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pickle"))]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model"] == name and cfg["params"] == json.loads(json.dumps(model.get_params()))
    loaded = Recommender.load(path)
    assert type(loaded) is type(model)
    hist = [split.test.history(i) for i in range(8)]
    assert torch.equal(loaded.score(hist), model.score(hist))
    assert loaded.bundle_metrics_ == {"NDCG@10": 0.5}
    assert loaded.user_map_ == model.user_map_ and loaded.item_map_ == model.item_map_


def test_load_rejects_non_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an attnrec bundle"):
        Recommender.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="unsupported bundle format"):
        Recommender.load(tmp_path)


def test_unknown_model_name_lists_known():
    with pytest.raises(ValueError, match="known models: .*ease"):
        get_model_class("nope")


# ---- declared capabilities: each one works, every other one is refused clearly ------------------
CAPABILITY_CASES = [(name, cap) for name in MODELS for cap in Capability]


def _undeclared_calls(model, hist):
    return {
        Capability.EXPLAIN: lambda: model.explain_items(hist, [[1]] * len(hist)),
        Capability.VECTORS: lambda: (model.item_vectors(), model.query_vectors(hist)),
        Capability.ATTENTION: lambda: model.attention_maps(hist),
        Capability.REFIT: lambda: (model.refit_params(), model.training_summary()),
        Capability.ADD_ITEMS: lambda: model.add_items([{"item_id": "brand-new"}]),
        Capability.SIMILAR_ITEMS: lambda: model.similar_scores([1]),
        Capability.WARM_START: lambda: type(model)().warm_start_from(model),
    }


@pytest.mark.parametrize("name,cap", CAPABILITY_CASES, ids=[f"{n}-{c.value}" for n, c in CAPABILITY_CASES])
def test_declared_capability_works_and_undeclared_is_refused(name, cap, fitted, split, offline_text,
                                                            small_synthetic):
    model = fitted[name]
    hist = [split.test.history(i) for i in range(6)]
    n_cols = split.train_full.n_items + 1
    if not model.supports(cap):
        for method in CAPABILITY_METHODS[cap]:
            assert getattr(type(model), method) is getattr(Recommender, method), \
                f"{name} implements {method} without declaring {cap.value}"
        with pytest.raises(CapabilityError, match=f"model '{name}' does not declare the '{cap.value}' capability"):
            _undeclared_calls(model, hist)[cap]()
        return
    if cap is Capability.EXPLAIN:
        recs, _ = model.recommend(hist, k=5)
        exps = model.explain_items(hist, [r.tolist() for r in recs])
        assert len(exps) == len(hist)
        nonzero = 0
        for h, rec, row in zip(hist, recs, exps):
            assert len(row) == len(rec)
            for e in row:
                assert isinstance(e, Explanation) and e.method == model.explain_method
                assert ((e.positions >= 0) & (e.positions < len(h))).all()
                np.testing.assert_array_equal(e.items, h[e.positions])
                assert np.abs(e.weights).sum() <= 1 + 1e-6
                nonzero += int((e.weights != 0).any())
        if model.explain_method != "popularity":  # popularity rests on no history item
            assert nonzero > 0
    elif cap is Capability.VECTORS:
        V, Q = model.item_vectors(), model.query_vectors(hist)
        assert V.shape[0] == n_cols and Q.shape == (len(hist), V.shape[1])
        torch.testing.assert_close(torch.from_numpy(Q @ V.T)[:, 1:], model.score(hist)[:, 1:],
                                   rtol=1e-4, atol=1e-4)
    elif cap is Capability.ATTENTION:
        maps = model.attention_maps(hist)
        assert len(maps.layers) >= 1 and maps.causal is type(model).attention_causal
        upper = 0.0
        for b, h in enumerate(hist):
            n = int(maps.lengths[b])
            assert 0 < n <= len(h) and maps.offset(b, len(h)) == len(h) - n
            for heads in maps.history_maps(b):
                assert heads.shape[-2:] == (n, n) and (heads.sum(-1) <= 1 + 1e-5).all()
                upper += float(torch.triu(heads, diagonal=1).abs().sum())
            R = maps.rollout(b)
            assert torch.allclose(R.sum(-1), torch.ones(len(R)), atol=1e-5)
            assert maps.query_weights(b).sum() == pytest.approx(1.0)
        # the declared flag is what the maps show: causal maps have an empty upper triangle
        assert (upper == 0.0) == maps.causal
    elif cap is Capability.REFIT:
        params = model.refit_params()
        assert params and set(params) <= set(model.get_params())
        summary = model.training_summary()
        assert set(summary) == {"best_epoch", "best_metric", "history"}
        assert summary["history"] and all("epoch" in h for h in summary["history"])
    elif cap is Capability.ADD_ITEMS:
        import copy

        grown = copy.deepcopy(model)
        ids = grown.add_items([{"item_id": "brand-new-item", "name": "Trail Running Shoe"}])
        assert ids == [n_cols] and grown.n_items_ == n_cols
        assert grown.item_map_.get("brand-new-item") == n_cols
        assert grown.score(hist).shape == (len(hist), n_cols + 1)
        assert model.n_items_ == n_cols - 1, "the original model is unchanged"
    elif cap is Capability.WARM_START:
        # a fit that cannot move the weights (learning rate 0) scores exactly like the model it started from
        warm = type(model)(**{**model.get_params(), "epochs": 1, "lr": 0.0, "patience": None})
        if model.supports(Capability.ADD_ITEMS):  # content models: the same catalogue
            warm.set_item_features(small_synthetic.catalogue)
        assert warm.warm_start_from(model) is warm
        warm.fit(split.train_full)
        torch.testing.assert_close(warm.score(hist), model.score(hist))
        with pytest.raises(TypeError, match="cannot start from"):
            warm.warm_start_from(fitted["pop"])
    elif cap is Capability.SIMILAR_ITEMS:
        s = model.similar_scores([1, 2])
        assert s.shape == (2, n_cols) and torch.isneginf(s[:, 0]).all()
        assert torch.isfinite(s[:, 1:]).all()
        assert not torch.equal(s[0], s[1]), "a similarity depends on the item"


def test_declaring_a_capability_without_implementing_it_fails_at_class_creation():
    with pytest.raises(TypeError, match="declares 'vectors' but does not implement item_vectors"):
        class Broken(Recommender):  # noqa: F841
            capabilities = frozenset({Capability.VECTORS})


@pytest.mark.parametrize("name", MODELS)
def test_empty_history_gets_the_one_popularity_fallback(name, fitted, split):
    model = fitted[name]
    empty = np.zeros(0, dtype=np.int64)
    s = model.score([empty, split.test.history(0)])
    assert torch.equal(s[0], popularity_scores(split.train_full))
    pop = get_model_class("pop")().fit(split.train_full)
    ids, _ = model.recommend([empty], k=10)
    want, _ = pop.recommend([empty], k=10)
    np.testing.assert_array_equal(ids, want)
