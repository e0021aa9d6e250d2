"""Everything in attnrec.__all__ resolves, and importing attnrec stays light."""

import subprocess
import sys

import attnrec


def test_all_exports_resolve():
    for name in attnrec.__all__:
        assert getattr(attnrec, name) is not None, name


def test_import_is_light():
    code = "import sys, attnrec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_quickstart_from_docstring(tmp_path, small_synthetic):
    from attnrec import EASE, Recommender, evaluate, leave_one_out

    split = leave_one_out(small_synthetic.to_sequences())
    model = EASE(l2=10).fit(split.train_full)
    ndcg = evaluate(model, split.test).metrics["NDCG@10"]
    model.save(tmp_path / "b")
    assert evaluate(Recommender.load(tmp_path / "b"), split.test).metrics["NDCG@10"] == ndcg
