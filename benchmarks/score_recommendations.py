"""Score a recommendation CSV independently of attnrec's evaluation code.

Reads the interactions file itself (sequence-per-line `user item1 item2 ...`, or
a CSV with user_id,item_id,timestamp), takes each user's chronologically last
item as the test target, and computes HR@K and NDCG@K of the `user,item,rank,score`
CSV written by `attnrec recommend`. Deliberately uses only the standard library.

    python benchmarks/score_recommendations.py ../shared/data/beauty.txt recs.csv --k 5 10 20
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict


def last_items(path: str) -> dict[str, str]:
    targets: dict[str, str] = {}
    if path.endswith(".txt"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    targets[parts[0]] = parts[-1]
        return targets
    best: dict[str, tuple[float, int]] = {}
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f)):
            key = (float(row["timestamp"]), row_no)  # file order breaks ties
            if row["user_id"] not in best or key >= best[row["user_id"]]:
                best[row["user_id"]] = key
                targets[row["user_id"]] = row["item_id"]
    return targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("interactions")
    ap.add_argument("recommendations")
    ap.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    args = ap.parse_args()
    targets = last_items(args.interactions)
    lists: dict[str, list[tuple[int, str]]] = defaultdict(list)
    with open(args.recommendations, newline="") as f:
        for row in csv.DictReader(f):
            lists[row["user"]].append((int(row["rank"]), row["item"]))
    hr = {k: 0.0 for k in args.k}
    ndcg = {k: 0.0 for k in args.k}
    for user, target in targets.items():
        ranked = [item for _, item in sorted(lists.get(user, []))]
        if target in ranked:
            r = ranked.index(target) + 1
            for k in args.k:
                if r <= k:
                    hr[k] += 1
                    ndcg[k] += 1 / math.log2(r + 1)
    n = len(targets)
    print(f"users {n}, users with lists {sum(1 for u in targets if u in lists)}")
    for k in args.k:
        print(f"HR@{k} {hr[k] / n:.4f}  NDCG@{k} {ndcg[k] / n:.4f}")


if __name__ == "__main__":
    main()
