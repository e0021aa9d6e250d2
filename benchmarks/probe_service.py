"""Probe a service started as the README says for the five findings of issue 13.

Starts ``attnrec serve`` itself (SQLite in a temporary directory, a write key, a read
key and declared event types, the bundle behind a symlink), talks to it over loopback
like any client, restarts it on a fresh database, and prints one line per check. Exit
status 1 if any finding reproduces.

    python benchmarks/probe_service.py --model runs/demo/bundle
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx

WRITE, READ = "probe-write-key-0123456789", "probe-read-key-9876543210"
TYPES = {"purchase": 3, "view": 1, "dislike": -1, "impression": 0}
W, R = {"X-API-Key": WRITE}, {"X-API-Key": READ}
results: list[tuple[str, bool, str]] = []


def check(finding: str, ok: bool, what: str) -> None:
    results.append((finding, bool(ok), what))
    print(f"{'ok  ' if ok else 'FAIL'} [{finding}] {what}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, model: Path, root: Path, db_name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = root / db_name
        env = {**os.environ, "ATTNREC_API_KEY": WRITE, "ATTNREC_READ_KEY": READ,
               "ATTNREC_EVENT_TYPES": json.dumps(TYPES), "ATTNREC_SECRET": "probe-secret-0123456789",
               "ATTNREC_WATCH_INTERVAL_S": "0.5"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnrec", "serve", "--model", str(model), "--port", str(self.port),
             "--db", f"sqlite:///{self.db}", "--data-dir", str(root / "data")],
            env=env, stdout=subprocess.DEVNULL, stderr=open(root / f"{db_name}.log", "w"), start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise RuntimeError("the service did not start")
        self.c = httpx.Client(base_url=self.url, timeout=30)

    def rss(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/status").read_text().split("VmRSS:")[1].split()[0]) * 1024

    def close(self) -> None:
        self.c.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(20)


def recs(s: Service, user: str, **params) -> list[str]:
    r = s.c.get(f"/users/{quote(user, safe='')}/recommendations", params=params, headers=R)
    r.raise_for_status()
    return [it["item"] for it in r.json()["items"]]


def probe(model: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="attnrec-probe-"))
    a, b = root / "bundle-a", root / "bundle-b"
    shutil.copytree(model, a)
    shutil.copytree(model, b)
    cfg = json.loads((b / "config.json").read_text())
    cfg["saved_at"] = "2099-01-01T00:00:00"  # same model, another version
    (b / "config.json").write_text(json.dumps(cfg))
    link = root / "current"
    link.symlink_to(a)
    s = Service(link, root, "first.db")
    try:
        users = [u["user"] for u in s.c.get("/explorer/users", params={"limit": 20}, headers=R).json()["users"]]
        user = users[0]

        # 1. feedback has meaning
        top = recs(s, user, k=5)
        s.c.post("/events", headers=W, json={"user": user, "item": top[0], "event_type": "dislike"})
        check("1 feedback", top[0] not in recs(s, user, k=50), "a dislike removes the item from the user's list")
        r = s.c.post("/events", headers=W, json={"user": user, "item": top[1], "event_type": "no-such-type"})
        check("1 feedback", r.status_code == 422, f"an undeclared event type is refused ({r.status_code})")
        for bad in (1e300, True, "1700000000", 0):
            r = s.c.post("/events", headers=W, json={"user": "p", "item": top[1], "timestamp": bad})
            check("1 feedback", r.status_code == 422, f"timestamp {bad!r} refused ({r.status_code})")
        s.c.post("/events", headers=W, json={"user": "order", "item": top[2], "timestamp": "2024-01-02T00:00:00Z"})
        s.c.post("/events", headers=W, json={"user": "order", "item": top[3], "timestamp": "2024-01-01T00:00:00Z"})
        seq = s.c.get("/users/order", params={"recent": 5}, headers=R).json()["recent_items"]
        check("1 feedback", seq == [top[3], top[2]], "the sequence follows event time, not arrival")
        ev = {"user": "retry", "item": top[1], "event_id": "probe-1"}
        s.c.post("/events", headers=W, json=ev)
        s.c.post("/events", headers=W, json=ev)
        n = s.c.get("/users/retry", headers=R).json()["stored_events"]
        check("1 feedback", n == 1, f"a retried event_id is stored once ({n})")

        # 2. catalogue management
        hidden = recs(s, user, k=3)[0]
        r = s.c.patch(f"/items/{quote(hidden, safe='')}", headers=W, json={"hidden": True})
        lists = [recs(s, user, k=100), recs(s, "stranger", k=100),
                 [i["item"] for i in s.c.post("/recommendations/session", headers=R,
                                              json={"items": [top[1]], "k": 100}).json()["items"]],
                 [i["item"] for i in s.c.get(f"/items/{quote(top[1], safe='')}/similar", params={"k": 100},
                                             headers=R).json()["items"]],
                 [i["item"] for i in s.c.get("/explorer/items", params={"limit": 200}, headers=R).json()["items"]]]
        check("2 catalogue", r.status_code == 200 and all(hidden not in x for x in lists),
              "PATCH /items/{item} {hidden: true}: in no list (user, fallback, session, similar, search)")
        gone = recs(s, user, k=3)[0]
        r = s.c.delete(f"/items/{quote(gone, safe='')}", headers=W)
        check("2 catalogue", r.status_code == 200 and gone not in recs(s, user, k=100), "DELETE /items/{item}")
        r = s.c.post("/items", headers=W, json={"items": [{"item": "probe-new", "name": "New", "labels": ["x"]}]})
        check("2 catalogue", r.status_code == 201, f"POST /items works for this model ({r.status_code})")
        page = s.c.get(f"/users/{user}/recommendations", params={"k": 5, "offset": 5}, headers=R)
        full = recs(s, user, k=10)
        check("2 catalogue", page.status_code == 200 and [i["item"] for i in page.json()["items"]] == full[5:],
              "offset pages the recommendations")
        r = s.c.get(f"/items/{quote(top[1], safe='')}/similar", params={"k": 5, "offset": 2, "exclude": full[0]},
                    headers=R)
        check("2 catalogue", r.status_code == 200, f"similar items take offset and exclude ({r.status_code})")

        # 3. reads are closed, no paths, CORS
        for path in (f"/users/{user}?recent=100", f"/users/{user}/attention", "/explorer/users", "/admin/model",
                     f"/users/{user}/recommendations", "/metrics"):
            code = s.c.get(path).status_code
            check("3 access", code == 401, f"GET {path} without a key: {code}")
        info = s.c.get("/admin/model", headers=R).text
        check("3 access", str(root) not in info and str(model) not in info, "/admin/model shows no server path")
        pre = s.c.options(f"/users/{user}/recommendations",
                          headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"})
        check("3 access", pre.status_code != 405 and "access-control-allow-origin" not in pre.headers,
              f"CORS preflight answered and no origin allowed by default ({pre.status_code})")

        # 4. erasure
        slash = "tenant/42"
        s.c.post("/events", headers=W, json={"user": slash, "item": top[1]})
        got = s.c.get("/users/tenant%2F42", headers=R)
        check("4 erasure", got.status_code == 200 and got.json()["user"] == slash, "a '/' id can be read")
        check("4 erasure", s.c.delete("/users/tenant%2F42", headers=W).status_code == 200, "... and deleted")
        check("4 erasure", s.c.get("/users/tenant%2F42", headers=R).status_code == 404, "... and is gone")
        check("4 erasure", s.c.delete(f"/users/{user}", headers=W).status_code == 200, f"DELETE /users/{user}")
        listed = [u["user"] for u in s.c.get("/explorer/users", params={"q": user, "limit": 500},
                                             headers=R).json()["users"]]
        check("4 erasure", user not in listed, "the deleted user is not listed by /explorer/users")
        with sqlite3.connect(s.db) as conn:
            digests = {r[0] for r in conn.execute("SELECT user_hmac FROM tombstones")}
        naive = {hashlib.sha256(x.encode()).hexdigest() for x in (user, slash)} | \
            {hashlib.sha256(b"attnrec-deleted-user\x00" + x.encode()).hexdigest() for x in (user, slash)}
        check("4 erasure", digests and not digests & naive, "tombstones are not unkeyed hashes of the ids")
        leaked = [f.name for f in root.glob("first.db*") if slash.encode() in f.read_bytes()]
        check("4 erasure", not leaked, f"the deleted id is in no database file ({leaked or 'none'})")
    finally:
        s.close()

    s = Service(link, root, "fresh.db")  # the same bundle, a brand-new database
    try:
        check("4 erasure", s.c.get(f"/users/{user}", headers=R).status_code == 404,
              "after a restart on a fresh database the deleted user is still gone")
        listed = [u["user"] for u in s.c.get("/explorer/users", params={"q": user, "limit": 500},
                                             headers=R).json()["users"]]
        check("4 erasure", user not in listed, "... and still not listed")

        # 5. graceful failure
        s.c.post("/events", headers=W, json={"user": "has-events", "item": top[1]})
        other = sqlite3.connect(s.db)
        other.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            r = s.c.post("/events", headers=W, json={"user": "locked", "item": top[1]})
            took = time.monotonic() - t0
            check("5 failure", r.status_code == 503 and took < 3 and "retry-after" in r.headers
                  and r.headers["content-type"].startswith("application/json"),
                  f"locked database: {r.status_code} in {took:.2f} s, Retry-After and JSON")
            ready = s.c.get("/ready")
            check("5 failure", ready.status_code == 503 and ready.json()["ready"] is False, "/ready is false meanwhile")
            t0 = time.monotonic()
            s.c.get("/users/has-events", headers=R)
            check("5 failure", time.monotonic() - t0 < 1, f"reads do not stall ({time.monotonic() - t0:.2f} s)")
        finally:
            other.rollback()
            other.close()
        rss0 = s.rss()
        for i in range(1000):
            s.c.get(f"/users/anon-{i}/recommendations", headers=R)
        grown = (s.rss() - rss0) / 2**20
        check("5 failure", grown < 5, f"1,000 distinct ids grow the server by {grown:.1f} MB")
        v0 = s.c.get("/admin/model", headers=R).json()["version"]
        tmp = root / "current.tmp"
        tmp.symlink_to(b)
        os.replace(tmp, link)
        deadline = time.monotonic() + 15
        while s.c.get("/admin/model", headers=R).json()["version"] == v0 and time.monotonic() < deadline:
            time.sleep(0.2)
        check("5 failure", s.c.get("/admin/model", headers=R).json()["version"] != v0,
              "a swapped symlink is picked up by the watcher")
        docs = s.c.get("/docs").text
        check("5 failure", "cdn" not in docs.lower(), "/docs loads no CDN asset")
        check("5 failure", s.c.head("/health").status_code == 200, "HEAD /health")
    finally:
        s.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="A bundle directory (it is copied, not changed)")
    args = ap.parse_args()
    probe(args.model.resolve())
    failed = [r for r in results if not r[1]]
    print(f"\n{len(results) - len(failed)}/{len(results)} checks passed; "
          f"findings reproducing: {sorted({f for f, _, _ in failed}) or 'none'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
