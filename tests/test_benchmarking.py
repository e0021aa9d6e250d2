"""The helper the benchmark scripts share for paths and dataset loading."""

import subprocess
import sys

import pytest

from attnrec import benchmarking


def test_dataset_paths_follow_the_environment(tmp_path, monkeypatch, small_synthetic):
    monkeypatch.setenv("ATTNREC_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set ATTNREC_SHARED_DATA"):
        benchmarking.dataset_path("beauty")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; known: beauty, ml-100k"):
        benchmarking.dataset_path("nope")
    (tmp_path / "beauty.txt").write_text("u1 a b c\nu2 b c d\n")
    data, split = benchmarking.load_split("beauty")
    assert (data.n_users, data.n_items) == (2, 4)
    assert [split.test.targets(i).tolist() for i in range(2)] == [[data.item_map.to_dense("c")],
                                                                  [data.item_map.to_dense("d")]]
    path = small_synthetic.write(tmp_path / "shop") / "interactions.csv"
    assert benchmarking.load(path).n_interactions == len(small_synthetic.log)


SCRIPTS = ("beauty_attention", "beauty_bert4rec", "cold_start", "two_stage", "scale", "sasrec_losses", "privacy")


def test_scripts_run_without_path_edits(tmp_path):
    """Each script imports from an installed attnrec, started from anywhere (one process for all)."""
    run_all = (
        "import runpy, sys\n"
        f"for script in {SCRIPTS!r}:\n"
        f"    sys.argv = [script, '--help']\n"
        "    try:\n"
        f"        runpy.run_path(r'{benchmarking.BENCHMARKS}/' + script + '.py', run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (script, e.code)\n"
        "    print('ran', script)\n"
    )
    r = subprocess.run([sys.executable, "-c", run_all], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stdout.splitlines() if line.startswith("ran ")] == [f"ran {s}" for s in SCRIPTS]
    for script in benchmarking.BENCHMARKS.glob("*.py"):  # every script, present and future
        assert "sys.path.insert" not in script.read_text(), script.name
