"""The built-in demo chooses the model it saves on validation data, never on test data."""

import pytest

from attnrec import demo
from attnrec.data.preprocess import load_dataset
from attnrec.evaluation import evaluate
from attnrec.models.base import Recommender
from attnrec.pipeline import build_model, make_split

SMALL = {"pop": {}, "ease": {"l2": 100.0},
         "sasrec": {"epochs": 4, "d_model": 16, "n_heads": 1, "n_layers": 1, "num_threads": 1}}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "DEMO_MODELS", SMALL)
        yield demo.run_demo(tmp_path_factory.mktemp("demo"), n_users=300, n_examples=1)


def test_the_saved_model_is_the_best_on_validation(report):
    assert set(report.validation_ndcg) == set(SMALL)
    assert report.best == max(report.validation_ndcg, key=report.validation_ndcg.get)
    assert Recommender.load(report.bundle).model_name == report.best
    sasrec = next(r for r in report.runs if r.name == "sasrec")
    assert report.validation_ndcg["sasrec"] == sasrec.model.validation_["metrics"]["NDCG@10"]


def test_a_model_without_selection_is_scored_on_validation_by_a_copy_fitted_on_train_alone(report, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_MODELS", SMALL)
    split = make_split(load_dataset(report.data_dir / "interactions.csv")[0], "loo")
    pop = next(r for r in report.runs if r.name == "pop")
    want = evaluate(build_model("pop", {}).fit(split.train), split.valid, ks=(10,)).metrics["NDCG@10"]
    assert demo.validation_ndcg(pop, split) == pytest.approx(want)
    # the demo's own pop was fitted on train + validation for the test: scoring it on validation would leak
    leaky = evaluate(pop.model, split.valid, ks=(10,)).metrics["NDCG@10"]
    assert leaky != pytest.approx(want)
