"""Hot reload under load: requests in flight finish on the old model, none fail."""

from __future__ import annotations

import shutil
import threading
import time

import httpx

from attnrec.models import EASE

from .conftest import AUTH


def hammer(url: str, users: list[str], stop: threading.Event, results: list, errors: list):
    with httpx.Client(base_url=url, timeout=30) as c:
        i = 0
        while not stop.is_set():
            u = users[i % len(users)]
            i += 1
            try:
                if i % 3 == 0:
                    r = c.post("/recommendations/session", json={"items": ["i1", "i2"], "k": 5, "explain": True})
                else:
                    r = c.get(f"/users/{u}/recommendations", params={"k": 10, "explain": i % 2 == 0})
            except httpx.HTTPError as e:  # a dropped connection is a failure too
                errors.append(repr(e))
                continue
            body = r.json()
            results.append((r.status_code, r.headers.get("x-model-version"), body.get("model_version")))


def run_load(url, users, n_threads=6):
    stop, results, errors = threading.Event(), [], []
    threads = [threading.Thread(target=hammer, args=(url, users, stop, results, errors)) for _ in range(n_threads)]
    for t in threads:
        t.start()
    return stop, threads, results, errors


def test_reload_by_api_under_concurrent_requests(live_server, ease_bundle, pop_bundle, shop_data):
    server = live_server(ease_bundle)
    users = shop_data.user_map.raw_ids[:50]
    with httpx.Client(base_url=server.url) as c:
        v1 = c.get("/admin/model").json()["version"]
        stop, threads, results, errors = run_load(server.url, users)
        time.sleep(0.3)
        versions = [v1]
        for path in (pop_bundle, ease_bundle, pop_bundle):
            r = c.post("/admin/reload", json={"path": str(path)}, headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
            versions.append(r.json()["version"])
            time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        assert c.get("/admin/model").json()["version"] == versions[-1]
    assert not errors, errors[:3]
    assert len(results) > 50
    assert all(status == 200 for status, _, _ in results), {s for s, _, _ in results}
    # every response names one of the served models, header and body agreeing
    assert all(h == b and h in versions for _, h, b in results)
    assert {h for _, h, _ in results} == set(versions[:2])


def test_reload_on_bundle_file_change(live_server, ease_bundle, shop_data, tmp_path):
    bundle = tmp_path / "served"
    shutil.copytree(ease_bundle, bundle)
    server = live_server(bundle, watch_model=True, watch_interval_s=0.2)
    users = shop_data.user_map.raw_ids[:50]
    with httpx.Client(base_url=server.url) as c:
        v1 = c.get("/admin/model").json()["version"]
        stop, threads, results, errors = run_load(server.url, users, n_threads=3)
        time.sleep(0.3)
        EASE(l2=200.0).fit(shop_data).save(bundle)  # overwrite in place; config.json is written last
        deadline = time.monotonic() + 15
        while (v2 := c.get("/admin/model").json()["version"]) == v1 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
    assert v2 != v1, "the watcher did not pick up the new bundle"
    assert not errors and all(s == 200 for s, _, _ in results)
    assert {h for _, h, _ in results} <= {v1, v2} and v2 in {h for _, h, _ in results}
