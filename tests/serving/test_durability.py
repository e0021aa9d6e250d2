"""No acknowledged event is lost: SIGKILL the server mid-stream, restart, count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import sqlalchemy as sa

from .conftest import API_KEY, AUTH, free_port

SERVER = """
import sys
from pathlib import Path
from attnrec.serving import run
run(Path(sys.argv[1]), db=sys.argv[2], port=int(sys.argv[3]), log_level="warning")
"""


def start_server(bundle, db_url, port):
    env = {**os.environ, "ATTNREC_API_KEY": API_KEY, "ATTNREC_WATCH_MODEL": "false"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(bundle), db_url, str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not become ready")


def test_acknowledged_events_survive_sigkill(ease_bundle, db_url):
    port = free_port()
    proc, url = start_server(ease_bundle, db_url, port)
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def stream(worker: int):
        n = 0
        with httpx.Client(base_url=url, headers=AUTH, timeout=10) as c:
            while not stop.is_set():
                batch = [{"user": f"dur-{worker}-{n // 7}", "item": f"item-{worker}-{n + j}"} for j in range(50)]
                n += 50
                try:
                    r = c.post("/events/batch", json={"events": batch})
                except httpx.HTTPError:
                    return  # the server died under us: this batch was never acknowledged
                if r.status_code == 201:
                    acked.extend((e["user"], e["item"]) for e in batch)

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight right now
        proc.wait(10)
        for t in threads:
            t.join(15)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    n_acked = len(acked)
    assert n_acked >= 2000, f"only {n_acked} events acknowledged before the kill"

    proc2, url2 = start_server(ease_bundle, db_url, free_port())
    try:
        engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.connect() as conn:
            stored = set(conn.execute(sa.text("SELECT user_id, item_id FROM events")).all())
        engine.dispose()
        missing = [e for e in acked if e not in stored]
        assert not missing, f"{len(missing)} of {n_acked} acknowledged events lost, e.g. {missing[:3]}"
        # and the restarted service sees them in the users' sequences
        user, _ = acked[-1]
        r = httpx.get(f"{url2}/users/{user}")
        assert r.status_code == 200
        assert r.json()["stored_events"] >= sum(1 for u, _ in acked if u == user)
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(15)
