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
