"""Where does a model's validation-to-test drop come from? (a diagnosis, never a selection criterion)

For bundles fitted on the leave-one-out *train* split (``beauty_attention.py
--protocol train-only --save DIR``), evaluated on the same split:

* ``valid``: input ``s[:-2]``, target ``s[-2]``; ``test``: input ``s[:-1]``,
  target ``s[-1]`` (the paper protocol's figures), each with its standard error
  over users, and the drop ``1 - test / valid``;
* ``test, oldest item dropped``: the test input without its first item, so a
  left-aligned model sees its newest item at the position index it had at
  validation (for a right-aligned model nothing moves). If this recovers much
  of the drop, position indices are the cause;
* ``test, validation input``: the validation input (without the validation
  item) scored against the test target: how much of the test score comes from
  the one item the model never saw as an input;
* the drop by history length (short / long users).

    python benchmarks/valid_test_drop.py /tmp/A0.bundle /tmp/B1.bundle --data ../shared/data/beauty.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import attnrec.models  # noqa: E402,F401  (registry first)
from attnrec.data.dataset import EvalSet  # noqa: E402
from attnrec.data.preprocess import load_dataset  # noqa: E402
from attnrec.data.splits import leave_one_out  # noqa: E402
from attnrec.evaluation import evaluate  # noqa: E402
from attnrec.models.base import Recommender  # noqa: E402


def ndcg10(model: Recommender, evalset: EvalSet) -> np.ndarray:
    return evaluate(model, evalset, ks=(10,), per_case=True).per_case["NDCG@10"]  # type: ignore[attr-defined]


def with_histories(evalset: EvalSet, histories: list[np.ndarray], name: str) -> EvalSet:
    return EvalSet.from_lists(evalset.users, histories,
                              [evalset.targets(i) for i in range(len(evalset))], name)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--data", default="../shared/data/beauty.txt")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    data = load_dataset(Path(args.data))[0]
    split = leave_one_out(data)
    valid, test = split.valid, split.test
    # the same users in both (users with 2 items have a test case only)
    common = np.intersect1d(valid.users, test.users)
    vi = np.searchsorted(valid.users, common)
    ti = np.searchsorted(test.users, common)
    test_hist = [test.history(i) for i in ti]
    valid_hist = [valid.history(i) for i in vi]
    test_c = with_histories(test, test_hist, "test")
    valid_c = EvalSet.from_lists(common, valid_hist, [valid.targets(i) for i in vi], "valid")
    test_drop_oldest = with_histories(test_c, [h[1:] for h in test_hist], "test, oldest dropped")
    test_valid_input = with_histories(test_c, valid_hist, "test, validation input")
    lens = np.array([len(h) for h in valid_hist])
    out = {}
    for b in args.bundles:
        m = Recommender.load(b)
        v, t = ndcg10(m, valid_c), ndcg10(m, test_c)
        d_old, d_vin = ndcg10(m, test_drop_oldest), ndcg10(m, test_valid_input)
        se = lambda x: float(x.std(ddof=1) / np.sqrt(len(x)))  # noqa: E731
        row = {
            "params": {k: m.get_params()[k] for k in ("training", "align", "pre_ln", "dropout", "mixer")
                       if k in m.get_params()},
            "users": int(len(common)),
            "valid": float(v.mean()), "valid_se": se(v),
            "test": float(t.mean()), "test_se": se(t),
            "drop": float(1 - t.mean() / v.mean()),
            "drop_se": float(se(v - t) / v.mean()),
            "test_oldest_dropped": float(d_old.mean()),
            "test_validation_input": float(d_vin.mean()),
            "by_history_length": {},
        }
        for lo, hi in ((1, 3), (4, 7), (8, 19), (20, 10**9)):
            sel = (lens >= lo) & (lens <= hi)
            if not sel.any():
                continue
            row["by_history_length"][f"{lo}-{hi if hi < 10**9 else 'inf'}"] = {
                "users": int(sel.sum()), "valid": float(v[sel].mean()), "test": float(t[sel].mean()),
                "drop": float(1 - t[sel].mean() / v[sel].mean())}
        out[b] = row
        print(f"{b}: valid {row['valid']:.4f}±{row['valid_se']:.4f} test {row['test']:.4f}±{row['test_se']:.4f} "
              f"drop {100 * row['drop']:.1f}%±{100 * row['drop_se']:.1f}; test with oldest item dropped "
              f"{row['test_oldest_dropped']:.4f}; test target from the validation input "
              f"{row['test_validation_input']:.4f}")
        for k, r in row["by_history_length"].items():
            print(f"   history {k}: {r['users']} users, valid {r['valid']:.4f} test {r['test']:.4f} "
                  f"drop {100 * r['drop']:.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
