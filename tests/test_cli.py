"""The CLI end to end on small synthetic data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnrec.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


@pytest.fixture(scope="module")
def shop(tmp_path_factory, small_synthetic):
    return small_synthetic.write(tmp_path_factory.mktemp("shop"))


def test_help_lists_commands():
    r = invoke("--help")
    assert r.exit_code == 0
    for cmd in ("train", "evaluate", "recommend", "demo", "serve", "data", "datasets"):
        assert cmd in r.output


def test_data_stats(shop, small_synthetic):
    r = invoke("data", "stats", shop / "interactions.csv", "--json")
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert stats["interactions"] == len(small_synthetic.log)
    assert stats["users"] == 300
    assert 0 < stats["density"] < 1
    assert stats["seq_len_p50"] > 0


def test_data_stats_reports_bad_file_without_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,product,timestamp\n1,2,3\n")
    r = invoke("data", "stats", bad)
    assert r.exit_code == 2
    assert "item_id" in r.output and "bad.csv" in r.output
    assert "Traceback" not in r.output
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    r = invoke("data", "stats", empty)
    assert r.exit_code == 2 and "empty" in r.output.lower()


def test_train_evaluate_recommend_and_independent_score(shop, tmp_path):
    bundle = tmp_path / "ease"
    r = invoke("train", shop / "interactions.csv", "--model", "ease", "--param", "l2=20", "--out", bundle,
               "--items", shop / "items.csv")
    assert r.exit_code == 0, r.output
    assert (bundle / "items.csv").exists()
    out_json = tmp_path / "metrics.json"
    r = invoke("evaluate", shop / "interactions.csv", "--models", "pop,ease", "--param", "ease.l2=20",
               "--bundle", bundle, "--json", out_json)
    assert r.exit_code == 0, r.output
    assert "full ranking" in r.output and "history items excluded" in r.output
    res = json.loads(out_json.read_text())["models"]
    assert res["ease"]["metrics"]["NDCG@10"] > res["pop"]["metrics"]["NDCG@10"]
    # the trained bundle reproduces the freshly fitted model
    assert res["ease (ease, refit)"]["metrics"]["NDCG@10"] == pytest.approx(res["ease"]["metrics"]["NDCG@10"])

    recs = tmp_path / "recs.csv"
    r = invoke("recommend", bundle, "-k", "20", "--out", recs)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(recs)))
    assert list(rows[0]) == ["user", "item", "rank", "score"]
    assert rows[0]["rank"] == "1" and rows[0]["user"].startswith("u") and rows[0]["item"].startswith("i")
    scored = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "score_recommendations.py", shop / "interactions.csv", recs,
         "--k", "10", "20"], capture_output=True, text=True, check=True,
    ).stdout
    line = [l for l in scored.splitlines() if l.startswith("HR@10")][0].split()
    assert float(line[1]) == pytest.approx(res["ease"]["metrics"]["HR@10"], abs=1e-4)
    assert float(line[3]) == pytest.approx(res["ease"]["metrics"]["NDCG@10"], abs=1e-4)


def test_recommend_selected_users_to_stdout(shop, tmp_path):
    bundle = tmp_path / "pop"
    assert invoke("train", shop / "interactions.csv", "-m", "pop", "-o", bundle).exit_code == 0
    r = invoke("recommend", bundle, "--users", "u1,u2", "-k", "3")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0] == "user,item,rank,score" and len(lines) == 7
    r = invoke("recommend", bundle, "--users", "nobody")
    assert r.exit_code == 2 and "unknown user" in r.output


def test_sampled_metrics_are_labelled(shop):
    r = invoke("evaluate", shop / "interactions.csv", "--models", "pop", "--sampled-negatives", "50")
    assert r.exit_code == 0, r.output
    assert "SAMPLED" in r.output and "sampled" in r.output


def test_bad_options_get_clear_errors(shop):
    r = invoke("evaluate", shop / "interactions.csv", "--models", "nosuchmodel")
    assert r.exit_code == 2 and "unknown model" in r.output
    r = invoke("evaluate", shop / "interactions.csv", "--models", "ease", "--param", "l2")
    assert r.exit_code == 2 and "key=value" in r.output
    r = invoke("train", shop / "interactions.csv", "-m", "ease", "-o", "x", "--param", "bogus=1")
    assert r.exit_code == 2 and "bogus" in r.output


def test_serve_index_option_is_checked_and_passed_on(monkeypatch, tmp_path):
    import attnrec.serving as serving

    r = invoke("serve", "--model", tmp_path, "--index", "bogus")
    assert r.exit_code != 0 and "--index must be one of auto, exact, hnsw, ivf" in r.output
    seen = {}
    monkeypatch.setattr(serving, "run", lambda **kw: seen.update(kw))
    r = invoke("serve", "--model", tmp_path, "--index", "ivf")
    assert r.exit_code == 0, r.output
    assert seen["index"] == "ivf" and seen["model"] == tmp_path


def _score(interactions, recs, k=10):
    """HR@k and NDCG@k of a recommendation CSV by the standalone scorer (no attnrec code)."""
    out = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "score_recommendations.py", interactions, recs, "--k", str(k)],
        capture_output=True, text=True, check=True,
    ).stdout
    line = [l for l in out.splitlines() if l.startswith(f"HR@{k}")][0].split()
    return float(line[1]), float(line[3])


TINY_SASREC = ("-p", "epochs=4", "-p", "d_model=16", "-p", "max_len=20", "-p", "num_threads=1",
               "-p", "batch_size=64", "-p", "patience=null")


@pytest.mark.parametrize("protocol", ["paper", "refit"])
def test_protocol_bundle_recommends_the_test_stage(shop, tmp_path, protocol):
    """train --protocol P, recommend, score independently == the test figures evaluate prints."""
    data = shop / "interactions.csv"
    bundle = tmp_path / protocol
    r = invoke("train", data, "-m", "sasrec", *TINY_SASREC, "--protocol", protocol, "-o", bundle)
    assert r.exit_code == 0, r.output
    assert f"protocol: {protocol}:" in r.output
    metrics = json.loads((bundle / "metrics.json").read_text())
    config = json.loads((bundle / "config.json").read_text())
    assert metrics["protocol"] == protocol == config["info"]["protocol"]
    assert metrics["validation"]["best_epoch"] == config["extra"]["best_epoch"] or protocol == "refit"
    assert metrics["validation"]["metrics"]["NDCG@10"] == pytest.approx(metrics["validation"]["best_metric"])
    assert metrics["validation"]["n_cases"] == 300 and metrics["test"]["n_cases"] == 300

    out_json = tmp_path / "eval.json"
    r = invoke("evaluate", data, "-m", "sasrec", *TINY_SASREC, "--protocol", protocol, "--bundle", bundle,
               "--json", out_json)
    assert r.exit_code == 0, r.output
    assert f"protocol: {protocol}:" in r.output
    res = json.loads(out_json.read_text())
    assert res["protocol_name"] == protocol and res["protocol"].startswith(protocol + ":")
    fresh = res["models"]["sasrec"]["metrics"]
    from_bundle = res["models"][f"{protocol} (sasrec, {protocol})"]["metrics"]
    # same seed, same protocol: the freshly fitted model and the bundle agree, and so does train's test figure
    assert from_bundle["NDCG@10"] == pytest.approx(fresh["NDCG@10"], abs=1e-6)
    assert metrics["test"]["metrics"]["NDCG@10"] == pytest.approx(fresh["NDCG@10"], abs=1e-6)

    recs = tmp_path / "recs.csv"
    assert invoke("recommend", bundle, "-k", "10", "--out", recs).exit_code == 0
    hr, ndcg = _score(data, recs)
    assert hr == pytest.approx(fresh["HR@10"], abs=1e-4)
    assert ndcg == pytest.approx(fresh["NDCG@10"], abs=1e-4)


def test_paper_and_refit_differ_only_for_selected_models(shop, tmp_path):
    """Without a selection stage both protocols fit on train+validation: identical figures, named so."""
    out = {}
    for protocol in ("paper", "refit"):
        out[protocol] = tmp_path / f"{protocol}.json"
        r = invoke("evaluate", shop / "interactions.csv", "-m", "ease,sasrec", *TINY_SASREC, "-p", "ease.l2=20",
                   "--protocol", protocol, "--json", out[protocol])
        assert r.exit_code == 0, r.output
        assert f"ease: {protocol} protocol: fitted on train+validation (no selection stage)" in r.output
    paper, refit = (json.loads(out[p].read_text())["models"] for p in ("paper", "refit"))
    assert paper["ease"]["metrics"] == refit["ease"]["metrics"]
    assert paper["ease"]["fitted_on"] == "fitted on train+validation (no selection stage)"
    assert paper["sasrec"]["fitted_on"] == "fitted on train, selected on validation, tested without refit"
    assert refit["sasrec"]["fitted_on"] == "selected on validation, refitted on train+validation"
    assert paper["sasrec"]["metrics"]["NDCG@10"] != refit["sasrec"]["metrics"]["NDCG@10"]


def test_unknown_protocol_is_refused(shop):
    r = invoke("evaluate", shop / "interactions.csv", "-m", "pop", "--protocol", "train-only")
    assert r.exit_code == 2 and "unknown protocol 'train-only'; use one of paper, refit" in r.output


def test_holdout_none_bundle_says_so(shop, tmp_path):
    bundle = tmp_path / "all"
    r = invoke("train", shop / "interactions.csv", "-m", "pop", "--holdout", "none", "-o", bundle)
    assert r.exit_code == 0, r.output
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["protocol"] == "none" and metrics["test"] is None and metrics["validation"] is None
    assert "protocol: none" in r.output
    r = invoke("train", shop / "interactions.csv", "-m", "pop", "--holdout", "none", "--protocol", "paper",
               "-o", tmp_path / "x")
    assert r.exit_code == 2 and "--protocol needs a held-out test stage" in r.output


def test_non_neural_bundle_metrics_hold_test_figures(shop, tmp_path):
    bundle = tmp_path / "ease"
    r = invoke("train", shop / "interactions.csv", "-m", "ease", "-p", "l2=20", "-o", bundle, "--protocol", "paper")
    assert r.exit_code == 0, r.output
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["protocol"] == "paper" and metrics["validation"] is None
    assert metrics["fitted_on"] == "fitted on train+validation (no selection stage)"
    assert 0 < metrics["test"]["metrics"]["NDCG@10"] <= metrics["test"]["metrics"]["HR@10"] <= 1
    assert "full ranking" in metrics["test"]["ranking"]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any model starts training."""
    from attnrec.models.base import Recommender

    def fit(self, *a, **kw):
        raise AssertionError("training started before the inputs were checked")

    monkeypatch.setattr(Recommender, "fit", fit)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_bad_input_files_fail_before_training(shop, tmp_path, no_training, command):
    data = shop / "interactions.csv"
    extra = ("-o", tmp_path / "b", "-m", "ease") if command == "train" else ("-m", "pop,ease")
    no_id = tmp_path / "no_id.csv"
    no_id.write_text("sku,name\n1,a\n")
    empty_features = tmp_path / "features.csv"
    empty_features.write_text("item_id,category\n")
    bad_data = tmp_path / "bad.csv"
    bad_data.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,yesterday\n")
    cases = [
        ((data, *extra, "--items", tmp_path / "absent.csv"), "absent.csv: no such item catalogue file"),
        ((data, *extra, "--items", no_id), "no_id.csv: no item id column in the catalogue"),
        ((data, *extra, "--items", empty_features), "features.csv: the item catalogue file has no usable rows"),
        ((data, *extra[:-1], "sasrec-content", "-p", f"sasrec-content.item_features={empty_features}"),
         "features.csv: sasrec-content.item_features: the feature file has no usable rows"),
        ((bad_data, *extra), "bad.csv, line 3, column 'timestamp': 'yesterday' is not a number"),
    ]
    if command == "evaluate":
        cases.append(((data, *extra, "--bundle", tmp_path / "no_bundle"), "no_bundle is not an attnrec bundle"))
        cases.append(((data, *extra, "--json", tmp_path / "nowhere" / "m.json"),
                      f"the directory {tmp_path / 'nowhere'} does not exist"))
        cases.append(((data, *extra, "--report", no_id), "no_id.csv exists and is not a directory"))
    else:
        cases.append(((data, "-o", no_id, "-m", "ease"), "no_id.csv exists and is not a directory"))
    for args, message in cases:
        r = invoke(command, *args)
        assert r.exit_code == 2, r.output
        assert message in " ".join(r.output.split()), r.output
        assert "Traceback" not in r.output


def test_items_in_every_feature_format(shop, tmp_path):
    """--items takes RecBole .item, TSV and Parquet like the feature reader; the bundle gets items.csv."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(csv.DictReader(open(shop / "items.csv")))
    recbole = tmp_path / "shop.item"
    recbole.write_text("item_id:token\tname:token_seq\tcategory:token\n"
                       + "".join(f"{r['item_id']}\t{r['name']}\t{r['category']}\n" for r in rows))
    parquet = tmp_path / "shop.parquet"
    pq.write_table(pa.table({"item_id": [r["item_id"] for r in rows], "title": [r["name"] for r in rows]}), parquet)
    for items in (recbole, parquet):
        bundle = tmp_path / items.suffix[1:]
        r = invoke("train", shop / "interactions.csv", "-m", "pop", "-o", bundle, "--items", items)
        assert r.exit_code == 0, r.output
        written = list(csv.DictReader(open(bundle / "items.csv")))
        assert [w["item_id"] for w in written] == [r["item_id"] for r in rows]
        assert [w["name"] for w in written] == [r["name"] for r in rows]


def test_data_options_are_one_definition_shared_by_the_commands():
    """train, evaluate and data stats take the same data options, from DataOptions."""
    from dataclasses import fields

    from attnrec.cli import DataOptions

    flags = [f.metadata["param"].param_decls[0] for f in fields(DataOptions) if f.name != "path"]
    assert len(flags) == 10
    for command in (("train",), ("evaluate",), ("data", "stats")):
        r = invoke(*command, "--help")
        assert r.exit_code == 0
        for flag in flags:
            assert flag in r.output, (command, flag)


def test_data_options_reach_the_loader(shop, tmp_path):
    path = tmp_path / "events.tsv"
    rows = list(csv.DictReader(open(shop / "interactions.csv")))
    path.write_text("who\twhat\twhen\n" + "".join(f"{r['user_id']}\t{r['item_id']}\t{r['timestamp']}\n" for r in rows))
    per_user: dict[str, int] = {}
    for row in rows:
        per_user[row["user_id"]] = per_user.get(row["user_id"], 0) + 1
    k = sorted(per_user.values())[len(per_user) // 2]
    r = invoke("data", "stats", path, "--user-col", "who", "--item-col", "what", "--time-col", "when",
               "--min-user", k, "--json")
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    # only a user filter: one k-core pass keeps exactly the users with >= k events
    assert stats["users"] == sum(1 for n in per_user.values() if n >= k) < len(per_user)
    r = invoke("data", "stats", path, "--user-col", "nobody")
    assert r.exit_code == 2 and "missing column(s) 'nobody'" in r.output
