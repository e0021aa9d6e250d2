"""One contract, every model: each registered recommender must pass these."""

import json

import numpy as np
import pytest
import torch

from attnrec.data.splits import leave_one_out
from attnrec.models.base import Recommender, available_models, get_model_class

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
def fitted(split):
    return {name: _quick(name).fit(split.train_full) for name in MODELS}


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
