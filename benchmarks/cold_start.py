"""Cold-start benchmark: hold out a random fraction of items from training entirely.

    python benchmarks/cold_start.py --data ml-100k --split temporal --frac 0.1 --seed 0
    python benchmarks/cold_start.py --data synthetic --split loo

Protocol. Sequences are built on the full log (so every item has a dense id and
a catalogue row); ``--frac`` of the items (seeded) become *cold*: all their
events are removed from training data and from evaluation histories. Test
targets are split into cold and warm:

* cold cases (a target is a cold item) are ranked (a) among the cold items only
  (the usual strict cold-start protocol: "which new item") and (b) against the
  whole catalogue;
* warm cases are ranked against the whole catalogue (history excluded), as in
  ``attnrec evaluate``, so the warm-item trade-off is visible.

Models: SASRec (id only: cold items have untrained embeddings), SASRec with
content-aware item embeddings, pure text similarity, and popularity. Popularity
over cold items is reported twice: from training counts (all zero, so an
arbitrary order: what a shop really knows; reported with ties broken at random, the
mean of 20 draws, as ``pop-random-ties``) and an *oracle* that counts the
held-out items' events in the whole log (leaks test data; an upper reference).
Validation (early stopping) uses warm targets only.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

import attnrec.models.content  # noqa: F401  (registers sasrec-content, text-sim)
from attnrec import benchmarking
from attnrec.data.dataset import EvalSet, SequenceData, Split
from attnrec.evaluation import evaluate, metrics_from_ranks, ranks_of_targets
from attnrec.models.base import Capability
from attnrec.pipeline import build_model, fit_for_test, make_split
from attnrec.ranking import exclusion_mask

log = logging.getLogger("cold_start")


def load(name: str, seed: int):
    """``(data, catalogue source, text columns)``."""
    if name == "ml-100k":
        return benchmarking.load(name), str(benchmarking.side_file(name, ".item")), [
            "movie_title", "class", "release_year"]
    if name == "synthetic":
        from attnrec.data.synthetic import generate

        syn = generate(n_users=2000, n_items=400, seed=seed)
        return syn.to_sequences(), syn.catalogue, ["name", "category", "description"]
    raise SystemExit(f"unknown --data {name}")


def drop_items(data: SequenceData, cold: np.ndarray, keep: np.ndarray | None = None
               ) -> SequenceData:
    """``data`` without events of cold items (same users, ids and maps)."""
    keep = ~cold[data.items] if keep is None else keep & ~cold[data.items]
    user_of = np.repeat(np.arange(data.n_users), data.lengths)
    indptr = np.zeros_like(data.indptr)
    np.cumsum(np.bincount(user_of[keep], minlength=data.n_users), out=indptr[1:])
    ts = None if data.timestamps is None else data.timestamps[keep]
    return SequenceData(indptr, data.items[keep], data.n_items, data.user_map, data.item_map, ts)


def last_n(data: SequenceData, n: int) -> SequenceData:
    """Each user's last ``n`` events only."""
    pos = np.arange(len(data.items)) - np.repeat(data.indptr[:-1], data.lengths)
    keep = pos >= np.repeat(data.lengths - n, data.lengths)
    return drop_items(data, np.zeros(data.n_items + 1, bool), keep)


def restrict(es: EvalSet, cold: np.ndarray, want_cold: bool, name: str) -> EvalSet:
    """Cases of ``es`` with cold items removed from histories, keeping cold or warm targets."""
    users, hists, targets = [], [], []
    for i in range(len(es)):
        h = es.history(i)
        h = h[~cold[h]]
        t = es.targets(i)
        t = t[cold[t] == want_cold]
        if len(h) and len(t):
            users.append(int(es.users[i]))
            hists.append(h.tolist())
            targets.append(t.tolist())
    out = EvalSet.from_lists(users, hists, targets, name=name)
    out.meta = dict(es.meta)
    return out


def cold_start_split(split: Split, cold: np.ndarray) -> tuple[Split, EvalSet, EvalSet]:
    s = Split(drop_items(split.train, cold), restrict(split.valid, cold, False, "valid"),
              drop_items(split.train_full, cold), split.test, protocol=split.protocol)
    return s, restrict(split.test, cold, True, "test-cold"), restrict(split.test, cold, False,
                                                                      "test-warm")


def ranked_metrics(scores_fn, es: EvalSet, allowed: np.ndarray | None, ks=(10,)) -> dict:
    """Full-ranking metrics where only ``allowed`` items compete (None = all)."""
    ranks = []
    for start in range(0, len(es), 256):
        idx = range(start, min(len(es), start + 256))
        hist = [es.history(i) for i in idx]
        s = scores_fn(hist, es.users[start:start + len(hist)]).float()
        s = s.masked_fill(exclusion_mask(hist, s.shape[1]), float("-inf"))
        if allowed is not None:
            s[:, ~torch.from_numpy(allowed)] = float("-inf")
        ranks.extend(ranks_of_targets(s, [es.targets(i) for i in idx]))
    per = metrics_from_ranks(ranks, ks)
    return {k: float(v.mean()) for k, v in per.items() if k.split("@")[0] in ("HR", "NDCG")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k", choices=["ml-100k", "synthetic"])
    ap.add_argument("--split", default="temporal", choices=["temporal", "loo"])
    ap.add_argument("--frac", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--item-dropout", type=float, default=0.1)
    ap.add_argument("--text-cache", default=None)
    ap.add_argument("--models", default="pop,text-sim,sasrec,sasrec-content")
    ap.add_argument("--train-last", type=int, default=None,
                    help="keep only each user's last N training events (a cheaper run; all models)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-valid", action="store_true",
                    help="fit on train+valid for exactly --epochs (no early stopping, no refit)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    data, catalogue, text_columns = load(args.data, args.seed)
    rng = np.random.default_rng(args.seed)
    items = np.arange(1, data.n_items + 1)
    cold = np.zeros(data.n_items + 1, dtype=bool)
    cold[rng.choice(items, size=int(round(args.frac * data.n_items)), replace=False)] = True
    full_counts = data.item_counts().astype(np.float32)
    split = make_split(data, args.split)
    cs, test_cold, test_warm = cold_start_split(split, cold)
    if args.train_last:
        cs = Split(last_n(cs.train, args.train_last), cs.valid, last_n(cs.train_full, args.train_last),
                   cs.test, protocol=cs.protocol)
    log.info("%d cold items (%d events removed); %d cold-target and %d warm-target test cases",
             cold.sum(), int(full_counts[cold].sum()), len(test_cold), len(test_warm))

    sas = dict(max_len=args.max_len, epochs=args.epochs, patience=args.patience, seed=args.seed,
               num_threads=args.threads, lr=args.lr)
    content = dict(item_features=None, text_columns=text_columns, text_cache=args.text_cache)
    specs = {
        "pop": ("pop", {}),
        "text-sim": ("text-sim", content),
        "sasrec": ("sasrec", sas),
        "sasrec-content": ("sasrec-content", {**sas, **content,
                                              "item_dropout": args.item_dropout}),
    }
    results: dict[str, dict] = {}
    for name in args.models.split(","):
        model_name, params = specs[name]
        model = build_model(model_name, params)
        if model.supports(Capability.ADD_ITEMS):  # content models read the catalogue
            model.set_item_features(catalogue)
        t0 = time.perf_counter()
        if args.no_valid:
            model.fit(cs.train_full)
        else:
            fit_for_test(model, cs)
        fit_s = time.perf_counter() - t0
        r = {"fit_seconds": round(fit_s, 1)}
        r["warm"] = evaluate(model, test_warm, ks=(10,)).metrics
        r["warm"] = {k: v for k, v in r["warm"].items() if k in ("HR@10", "NDCG@10")}
        r["cold_among_cold"] = ranked_metrics(model.score, test_cold, cold)
        r["cold_full_catalogue"] = ranked_metrics(model.score, test_cold, None)
        if model.validation_:
            r["best_epoch"] = model.validation_.get("best_epoch")
        results[name] = r
        log.info("%s: %s", name, json.dumps(r))
    if "pop" in args.models.split(","):
        # the popularity baseline restricted to cold items: training counts are 0 for all of
        # them, so its order among them is its tie-break; break ties at random (mean of 20
        # draws) instead of the evaluator's pessimistic ties, which would score it 0
        train_counts = torch.from_numpy(np.log1p(cs.train_full.item_counts().astype(np.float32)))
        draws = []
        for d in range(20):
            g = torch.Generator().manual_seed(d)
            fn = lambda h, u: train_counts + 1e-3 * torch.rand(len(h), len(train_counts), generator=g)  # noqa: E731
            draws.append(ranked_metrics(fn, test_cold, cold))
        results["pop-random-ties"] = {"cold_among_cold": {k: float(np.mean([x[k] for x in draws]))
                                                          for k in draws[0]},
                                      "cold_full_catalogue": ranked_metrics(fn, test_cold, None)}
        oracle = torch.from_numpy(np.log1p(full_counts))  # leaks held-out events on purpose
        fn = lambda h, u: oracle.expand(len(h), -1).clone()  # noqa: E731
        results["pop-oracle"] = {"cold_among_cold": ranked_metrics(fn, test_cold, cold),
                                 "cold_full_catalogue": ranked_metrics(fn, test_cold, None)}
    summary = {
        "data": args.data, "split": args.split, "frac": args.frac, "seed": args.seed,
        "n_cold_items": int(cold.sum()), "n_cold_cases": len(test_cold),
        "n_warm_cases": len(test_warm), "protocol": split.protocol, "results": results,
    }
    print(json.dumps(summary, indent=2))
    print(f"\n{'model':<16}{'warm NDCG@10':>14}{'cold NDCG@10 (cold cands)':>28}"
          f"{'cold HR@10 (cold cands)':>26}{'cold NDCG@10 (all)':>20}")
    for name, r in results.items():
        w = r.get("warm", {}).get("NDCG@10", float("nan"))
        c = r["cold_among_cold"]
        print(f"{name:<16}{w:>14.4f}{c['NDCG@10']:>28.4f}{c['HR@10']:>26.4f}"
              f"{r['cold_full_catalogue']['NDCG@10']:>20.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
