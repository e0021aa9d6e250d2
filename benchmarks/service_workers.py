"""1 vs N service workers on a shared database: locust mixed load, and cross-worker delay.

For each worker count: start ``attnrec serve --workers N`` on the database given by
``--db`` (PostgreSQL for several workers), wait for /ready, run locust headless
(``benchmarks/locustfile.py``: 20 clients, mixed reads and writes), then measure how
long an event acknowledged by one worker takes to show in the recommendations every
worker serves (fresh connections, so the kernel spreads them over the workers).

    python benchmarks/service_workers.py --model runs/demo/bundle --db postgresql://...@host/db

Prints one markdown row per worker count (p50/p99 in ms from locust, errors, req/s, the
delay) and the load average, for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KEY = "bench-write-key-0123456789"
TYPES = {"purchase": 3, "view": 1, "dislike": -1, "impression": 0}


def start(model: str, db: str, workers: int, port: int, data_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "ATTNREC_API_KEY": KEY, "ATTNREC_EVENT_TYPES": json.dumps(TYPES),
           "ATTNREC_SECRET": "bench-secret-0123456789", "ATTNREC_WATCH_MODEL": "false",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "attnrec", "serve", "--model", model, "--db", db,
                             "--port", str(port), "--workers", str(workers), "--data-dir", str(data_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(data_dir / "server.log", "w"),
                            start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise RuntimeError(f"the server did not get ready; see {data_dir / 'server.log'}")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def known_ids(url: str, n: int = 500) -> tuple[list[str], list[str]]:
    h = {"X-API-Key": KEY}
    users = [u["user"] for u in httpx.get(f"{url}/explorer/users", params={"limit": min(n, 500)},
                                          headers=h).json()["users"]]
    items = [i["item"] for i in httpx.get(f"{url}/explorer/items", params={"limit": 200},
                                          headers=h).json()["items"]]
    return users, items


def run_locust(url: str, users: list[str], items: list[str], clients: int, seconds: int,
               out: Path) -> dict:
    env = {**os.environ, "ATTNREC_API_KEY": KEY, "LOAD_USERS": ",".join(users),
           "LOAD_ITEMS": ",".join(items)}
    locustfile = Path(__file__).with_name("locustfile.py")
    subprocess.run(["locust", "-f", str(locustfile), "--headless", "-u", str(clients), "-r", str(clients),
                    "-t", f"{seconds}s", "--host", url, "--csv", str(out), "--only-summary",
                    "--loglevel", "WARNING"], env=env, check=False, capture_output=True)
    with open(f"{out}_stats.csv", newline="") as f:
        rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows["Aggregated"]
    return {"requests": int(agg["Request Count"]), "errors": int(agg["Failure Count"]),
            "p50": float(agg["50%"]), "p99": float(agg["99%"]), "rps": float(agg["Requests/s"]),
            "events_p50": float(rows["/events"]["50%"]), "events_p99": float(rows["/events"]["99%"])}


def cross_worker_delay(url: str, users: list[str], trials: int, fresh: int = 8) -> list[float]:
    """Seconds from an acknowledged dislike of a user's top item until ``fresh`` consecutive
    responses on new connections (any worker) no longer contain it."""
    delays = []
    h = {"X-API-Key": KEY}
    for t in range(trials):
        user = users[(7 * t) % len(users)]
        top = httpx.get(f"{url}/users/{user}/recommendations", params={"k": 10}, headers=h).json()["items"][0]["item"]
        r = httpx.post(f"{url}/events", headers=h, json={"user": user, "item": top, "event_type": "dislike"})
        r.raise_for_status()
        acked = time.monotonic()
        streak, first_ok = 0, None
        while streak < fresh:
            items = [it["item"] for it in httpx.get(f"{url}/users/{user}/recommendations", params={"k": 10},
                                                    headers=h).json()["items"]]
            if top in items:
                streak, first_ok = 0, None
            else:
                first_ok = first_ok or time.monotonic()
                streak += 1
            if time.monotonic() - acked > 10:
                raise RuntimeError("an event was not reflected by every worker within 10 s")
        delays.append(first_ok - acked)
    return delays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of an empty database (PostgreSQL)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    print("| workers | requests | errors | p50 ms | p99 ms | events p50/p99 ms | req/s | "
          "cross-worker delay median / max ms | load avg (1 min) before |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix="attnrec-bench-") as d:
            load = os.getloadavg()[0]
            proc = start(args.model, args.db, n, args.port, Path(d))
            try:
                url = f"http://127.0.0.1:{args.port}"
                users, items = known_ids(url)
                res = run_locust(url, users, items, args.clients, args.duration, Path(d) / "locust")
                delays = cross_worker_delay(url, users, args.trials)
            finally:
                stop(proc)
            print(f"| {n} | {res['requests']} | {res['errors']} | {res['p50']:.0f} | {res['p99']:.0f} | "
                  f"{res['events_p50']:.0f} / {res['events_p99']:.0f} | {res['rps']:.0f} | "
                  f"{statistics.median(delays) * 1000:.0f} / {max(delays) * 1000:.0f} | {load:.2f} |", flush=True)


if __name__ == "__main__":
    main()
