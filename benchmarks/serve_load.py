"""Load benchmark of the HTTP service on loopback: recommendation latency/throughput and ingest rate.

Starts ``attnrec.serving.run`` in a subprocess (one uvicorn worker, SQLite with
``synchronous=FULL`` in a temporary directory unless ``--db`` is given), then:

* recommendations: for each client count (default 1, 10, 50) and explain off/on,
  ``clients`` concurrent keep-alive connections request
  ``GET /users/{random known user}/recommendations?k=K`` for ``--duration`` seconds
  (at most ``--max-requests``); reports p50/p95/p99 latency and requests/s;
* ingest: ``--ingest-clients`` connections post batches of ``--ingest-batch``
  events (random known users and items) until ``--ingest-events`` are
  acknowledged, i.e. committed; reports events/s.

The per-user result cache is switched off (``ATTNREC_REC_CACHE_PER_USER=0``) so
every request scores. The load generator is a minimal asyncio HTTP/1.1 client
rather than httpx: on a 2-core machine that also runs the server, a heavier
client would mostly measure itself (``--client httpx`` to compare).

    python benchmarks/serve_load.py --model runs/ease-beauty --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

API_KEY = "bench-key"

SERVER = """
import sys
from pathlib import Path
from attnrec.serving import run
run(Path(sys.argv[1]), db=sys.argv[2] or None, port=int(sys.argv[3]), data_dir=Path(sys.argv[4]),
    log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), to report server CPU per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, db: str | None, data_dir: Path, timeout: float = 180.0):
    port = free_port()
    env = {**os.environ, "ATTNREC_API_KEY": API_KEY, "ATTNREC_WATCH_MODEL": "false",
           "ATTNREC_REC_CACHE_PER_USER": "0", "ATTNREC_MAX_BATCH": "5000",
           "ATTNREC_MAX_BODY_BYTES": "20000000"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(bundle), db or "", str(port), str(data_dir)],
                            env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


# ---- a minimal keep-alive HTTP/1.1 client ------------------------------------------
class Conn:
    def __init__(self, port: int):
        self.port = port

    async def open(self) -> "Conn":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: str = "") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\n{headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        payload = await self.reader.readexactly(length)
        return status, payload

    def close(self) -> None:
        self.writer.close()


async def rec_load(port: int, users: list[str], clients: int, duration: float, max_requests: int,
                   k: int, explain: bool, client_kind: str) -> dict:
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration
    budget = [max_requests]
    q = f"?k={k}" + ("&explain=true" if explain else "")

    async def worker(seed: int):
        nonlocal errors
        rng = random.Random(seed)
        if client_kind == "httpx":
            import httpx

            c = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")

            async def get(path):
                r = await c.get(path)
                return r.status_code
        else:
            c = await Conn(port).open()

            async def get(path):
                return (await c.request("GET", path))[0]
        try:
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                path = f"/users/{rng.choice(users)}/recommendations{q}"
                t0 = time.perf_counter()
                status = await get(path)
                lat.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            if client_kind == "httpx":
                await c.aclose()
            else:
                c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    ms = np.asarray(lat) * 1000
    return {"clients": clients, "explain": explain, "requests": len(lat), "errors": errors,
            "seconds": round(elapsed, 2), "rps": round(len(lat) / elapsed, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


async def ingest_load(port: int, users: list[str], items: list[str], n_events: int, batch: int,
                      clients: int) -> dict:
    rng = random.Random(1)
    bodies = []
    for start in range(0, n_events, batch):
        n = min(batch, n_events - start)
        ev = [{"user": rng.choice(users), "item": rng.choice(items), "event_type": "view"} for _ in range(n)]
        bodies.append(json.dumps({"events": ev}).encode())
    todo = list(reversed(bodies))
    stored = 0
    errors = 0

    async def worker():
        nonlocal stored, errors
        c = await Conn(port).open()
        try:
            while todo:
                body = todo.pop()
                status, payload = await c.request("POST", "/events/batch", body, f"X-API-Key: {API_KEY}\r\n")
                if status == 201:
                    stored += json.loads(payload)["stored"]
                else:
                    errors += 1
        finally:
            c.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return {"events": stored, "batch": batch, "clients": clients, "errors": errors,
            "seconds": round(elapsed, 2), "events_per_s": round(stored / elapsed, 0)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="bundle directory")
    p.add_argument("--db", default=None, help="database URL (default: SQLite in a temp dir)")
    p.add_argument("--clients", default="1,10,50")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    p.add_argument("--max-requests", type=int, default=20_000, help="per level")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--explain", default="off,on")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw")
    p.add_argument("--ingest-events", type=int, default=50_000)
    p.add_argument("--ingest-batch", type=int, default=500)
    p.add_argument("--ingest-clients", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    maps = json.loads((args.model / "sequences.maps.json").read_text())
    users, items = maps["user_map"]["raw_ids"], maps["item_map"]["raw_ids"]
    results: dict = {"model": str(args.model), "recommend": [], "ingest": None,
                     "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="attnrec-bench-") as tmp:
        proc, port = start_server(args.model, args.db, Path(tmp))
        try:
            asyncio.run(rec_load(port, users, 4, args.warmup, 10**9, args.k, True, "raw"))
            for explain in [e == "on" for e in args.explain.split(",")]:
                for clients in [int(c) for c in args.clients.split(",")]:
                    cpu0 = cpu_seconds(proc.pid)
                    r = asyncio.run(rec_load(port, users, clients, args.duration, args.max_requests,
                                             args.k, explain, args.client))
                    r["server_cpu_ms_per_req"] = round((cpu_seconds(proc.pid) - cpu0) * 1000 / max(1, r["requests"]), 3)
                    r["loadavg"] = loadavg()
                    results["recommend"].append(r)
                    print(json.dumps(r), flush=True)
            if args.ingest_events:
                r = asyncio.run(ingest_load(port, users, items, args.ingest_events, args.ingest_batch,
                                            args.ingest_clients))
                results["ingest"] = r
                print(json.dumps(r), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print()
    print("| clients | explain | requests | p50 ms | p95 ms | p99 ms | req/s | errors | server CPU ms/req | load avg |")
    print("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["recommend"]:
        print(f"| {r['clients']} | {'on' if r['explain'] else 'off'} | {r['requests']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['p99_ms']} | {r['rps']} | {r['errors']} | {r['server_cpu_ms_per_req']} | "
              f"{r['loadavg']} |")
    if results["ingest"]:
        i = results["ingest"]
        print(f"\ningest: {i['events']} events in batches of {i['batch']} from {i['clients']} clients: "
              f"{i['events_per_s']:.0f} events/s ({i['errors']} errors)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
