"""Replay benchmark: does retraining from the service's own events beat a frozen model?

Train a bundle on every event before a time cut-off, serve it (``attnrec
serve`` in a subprocess, SQLite), then replay the remaining events in time
order through the HTTP API: for each event, first ask
``GET /users/{user}/recommendations?k=10`` and score where the event's item
lands (next-event HR@10 / NDCG@10, full ranking, seen items excluded, users the
model cannot place get the service's popularity fallback and count too), then
``POST /events`` it. Modes:

* ``frozen``: the first model throughout; only the live sequences change;
* ``retrain``: every ``--every`` events, ``attnrec retrain`` (from scratch, the
  bundle's hyperparameters) in its own process at ``nice 10`` with one thread,
  writing over the served bundle; the service's watcher swaps it in;
* ``warm``: the same, with ``--warm-start --warm-epochs E``.

At each retrain point the replay pauses while a probe client keeps requesting
recommendations for random users: its latency during the retrain is compared
with the same probe on the idle service before the first retrain. Retrain wall
time and whether the guard accepted are reported per round.

    python benchmarks/replay.py --dataset ml-100k --threads 1
    python benchmarks/replay.py --dataset shop --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

API_KEY = "replay-bench-key"
ML100K = Path("/work/shared/data/ml-100k/ml-100k.inter")
SERVICE_EARLIEST = 946_684_800.0  # 2000-01-01T00:00:00Z, the service's earliest event time


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_events(dataset: str, shop_users: int, seed: int):
    """``(users, items, times)`` raw arrays, sorted by time (ties: file order)."""
    from attnrec.data.readers import read_log
    from attnrec.data.synthetic import generate

    if dataset == "ml-100k":
        lg = read_log(ML100K)
    elif dataset == "shop":
        lg = generate(n_users=shop_users, seed=seed).log
    else:
        raise SystemExit(f"unknown dataset {dataset!r}: ml-100k or shop")
    order = np.argsort(lg.timestamp, kind="stable")
    times = np.asarray(lg.timestamp, dtype=np.float64)[order]
    if times[0] < SERVICE_EARLIEST:
        # the service accepts event times from 2000 on (MovieLens 100K is 1997-98): shift every
        # time by one constant, which keeps the order and the gaps
        shift = SERVICE_EARLIEST + 86_400 - times[0]
        print(f"{dataset}: timestamps shifted by +{shift:.0f} s to enter the service's accepted window")
        times = times + shift
    return np.asarray(lg.user, dtype=str)[order], np.asarray(lg.item, dtype=str)[order], times


def first_bundle(users, items, times, out: Path, model: str, params: dict, threads: int) -> float:
    from attnrec.data.log import InteractionLog
    from attnrec.data.preprocess import build_sequences
    from attnrec.pipeline import build_model

    data, _ = build_sequences(InteractionLog(user=users, item=items, timestamp=times))
    params = dict(params)
    m = build_model(model, params)
    if "num_threads" in m.get_params():
        m.set_params(num_threads=threads)
    t0 = time.perf_counter()
    m.fit(data)
    m.save(out, info={"data": "replay benchmark: events before the cut-off", "holdout": "none"})
    return time.perf_counter() - t0


class Service:
    """``attnrec serve`` in a subprocess (its own process: retraining never shares its interpreter)."""

    def __init__(self, bundle: Path, workdir: Path):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = f"sqlite:///{workdir / 'events.db'}"
        self.data_dir = workdir / "data"
        env = {**os.environ, "ATTNREC_API_KEY": API_KEY, "ATTNREC_WATCH_INTERVAL_S": "0.5",
               "ATTNREC_REC_CACHE_PER_USER": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = open(workdir / "server.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnrec.cli", "serve", "--model", str(bundle), "--db", self.db,
             "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {workdir / 'server.log'}")
            try:
                if self.client.get("/ready").status_code == 200:
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready")
            time.sleep(0.3)

    def version(self) -> str:
        return self.client.get("/health").headers.get("x-model-version", "")

    def recommend(self, user: str, client=None) -> list[str]:
        r = (client or self.client).get(f"/users/{user}/recommendations", params={"k": 10})
        r.raise_for_status()
        return [it["item"] for it in r.json()["items"]]

    def post(self, user: str, item: str, ts: float) -> None:
        r = self.client.post("/events", json={"user": user, "item": item, "timestamp": ts},
                             headers={"X-API-Key": API_KEY})
        if r.status_code != 201:
            raise RuntimeError(f"POST /events: {r.status_code} {r.text}")

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Probe:
    """One keep-alive client requesting recommendations for random users; latencies in ms."""

    def __init__(self, service: Service, users: list[str], seed: int = 0):
        self.service, self.users, self.rng = service, users, random.Random(seed)
        self.latencies: list[float] = []
        self._stop = threading.Event()

    def run_for(self, seconds: float) -> list[float]:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def start(self) -> None:
        import httpx

        self._stop.clear()
        self.latencies = []

        def loop():
            with httpx.Client(base_url=self.service.url, timeout=60) as c:
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    self.service.recommend(self.rng.choice(self.users), c)
                    self.latencies.append((time.perf_counter() - t0) * 1000)
                    time.sleep(0.01)  # a steady stream, not a saturating one

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(60)
        return list(self.latencies)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_mode(mode: str, args, bundle0: Path, replay, probe_users: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"replay-{mode}-", dir=args.workdir))
    bundle = work / "bundle"
    shutil.copytree(bundle0, bundle)
    svc = Service(bundle, work)
    out = {"mode": mode, "rounds": []}
    try:
        idle = Probe(svc, probe_users, seed=1).run_for(args.probe_seconds)
        out["idle_p50_ms"], out["idle_p99_ms"], out["idle_requests"] = pct(idle, 50), pct(idle, 99), len(idle)
        hits, ndcg = [], []
        users, items, times = replay
        for n, (u, i, t) in enumerate(zip(users, items, times), start=1):
            recs = svc.recommend(u)
            rank = recs.index(i) + 1 if i in recs else 0
            hits.append(1.0 if rank else 0.0)
            ndcg.append(1.0 / math.log2(rank + 1) if rank else 0.0)
            svc.post(u, i, float(t))
            if mode != "frozen" and n % args.every == 0 and n < len(users):
                out["rounds"].append(retrain_round(mode, args, svc, bundle, probe_users, n))
        out["events"] = len(hits)
        out["HR@10"], out["NDCG@10"] = float(np.mean(hits)), float(np.mean(ndcg))
    finally:
        svc.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def retrain_round(mode: str, args, svc: Service, bundle: Path, probe_users: list[str], n: int) -> dict:
    before = svc.version()
    cmd = ["nice", "-n", str(args.nice), sys.executable, "-m", "attnrec.cli", "retrain", "--bundle", str(bundle),
           "--db", svc.db, "--out", str(bundle), "--data-dir", str(svc.data_dir), "--threads", str(args.threads),
           "--tolerance", str(args.tolerance)]
    for p in args.retrain_param:
        cmd += ["--param", p]
    if mode == "warm":
        cmd += ["--warm-start", "--warm-epochs", str(args.warm_epochs)]
    idle = Probe(svc, probe_users, seed=n).run_for(args.probe_seconds)  # the same probe just before
    probe = Probe(svc, probe_users, seed=n)
    probe.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    lat = probe.stop()
    accepted = proc.returncode == 0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"retrain failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    swapped = None
    if accepted:  # wait for the watcher to load it
        deadline = time.monotonic() + 60
        while svc.version() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        swapped = svc.version() != before
    line = next((ln for ln in proc.stdout.splitlines() if "NDCG@10 on" in ln), proc.stdout.strip()[-300:])
    print(f"  [{mode}] after {n} events: retrain {wall:.1f}s, {line}; probe p99 idle {pct(idle, 99):.1f} ms, "
          f"during {pct(lat, 99):.1f} ms; load average {loadavg()}", flush=True)
    return {"after_events": n, "wall_s": wall, "accepted": accepted, "swapped": swapped, "guard": line,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "requests": len(lat),
            "idle_p50_ms": pct(idle, 50), "idle_p99_ms": pct(idle, 99), "idle_requests": len(idle),
            "p99_ratio": pct(lat, 99) / pct(idle, 99), "load": loadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="ml-100k", help="ml-100k or shop")
    ap.add_argument("--shop-users", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cutoff", type=float, default=0.9, help="quantile of event time: train before, replay after")
    ap.add_argument("--max-replay", type=int, default=0, help="replay at most this many events (0: all)")
    ap.add_argument("--every", type=int, default=2500, help="retrain every N replayed events")
    ap.add_argument("--modes", default="frozen,retrain,warm")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--param", action="append", default=[], help="hyperparameter of the first model, key=value")
    ap.add_argument("--retrain-param", action="append", default=[], help="override for retrains, key=value")
    ap.add_argument("--warm-epochs", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--probe-seconds", type=float, default=15.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from attnrec.pipeline import parse_kv

    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    users, items, times = load_events(args.dataset, args.shop_users, args.seed)
    cut = float(np.quantile(times, args.cutoff))
    before = times < cut
    replay = (users[~before], items[~before], times[~before])
    if args.max_replay:
        replay = tuple(a[: args.max_replay] for a in replay)
    params = dict(parse_kv(p) for p in args.param)
    base = Path(tempfile.mkdtemp(prefix="replay-", dir=args.workdir))
    bundle0 = base / "first"
    fit_s = first_bundle(users[before], items[before], times[before], bundle0, args.model, params, args.threads)
    known = sorted(set(users[before]))
    probe_users = random.Random(args.seed).sample(known, min(200, len(known)))
    print(f"{args.dataset}: {before.sum()} events before the cut-off (first fit {fit_s:.1f}s), "
          f"{len(replay[0])} replayed, retrain every {args.every}; load average {loadavg()}", flush=True)
    results = {"dataset": args.dataset, "started": started, "argv": sys.argv[1:], "train_events": int(before.sum()),
               "replay_events": len(replay[0]), "first_fit_s": fit_s, "load_before": loadavg(), "modes": []}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        r = run_mode(mode, args, bundle0, replay, probe_users)
        r["load_after"] = loadavg()
        results["modes"].append(r)
        walls = [x["wall_s"] for x in r["rounds"]]
        p99s = [x["p99_ms"] for x in r["rounds"]]
        ratios = [x["p99_ratio"] for x in r["rounds"]]
        print(f"{mode:8} NDCG@10 {r['NDCG@10']:.4f} HR@10 {r['HR@10']:.4f} over {r['events']} events; "
              f"idle p50/p99 {r['idle_p50_ms']:.1f}/{r['idle_p99_ms']:.1f} ms"
              + (f"; retrains {len(walls)} (accepted {sum(x['accepted'] for x in r['rounds'])}), "
                 f"median wall {np.median(walls):.1f}s, p99 during retrain median {np.median(p99s):.1f} ms "
                 f"(max {max(p99s):.1f}), p99 during/idle just before: median {np.median(ratios):.2f}x "
                 f"(max {max(ratios):.2f}x)" if walls else "")
              + f"; load average {r['load_after']}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
