"""Security and bad input: always a 4xx with a clear message, never a 500."""

from __future__ import annotations

import pytest

from attnrec.serving import Settings, create_app, load_settings
from attnrec.serving.settings import InsecureConfiguration

from .conftest import AUTH


def test_refuses_open_write_endpoints(ease_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("ATTNREC_API_KEY", raising=False)
    with pytest.raises(InsecureConfiguration, match="--dev"):
        create_app(Settings(model_path=ease_bundle, data_dir=tmp_path))
    create_app(Settings(model_path=ease_bundle, data_dir=tmp_path, dev=True))  # explicit dev is fine


def test_key_from_env_and_settings_file(ease_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNREC_API_KEY", "from-env")
    assert Settings(model_path=ease_bundle).write_key == "from-env"
    monkeypatch.delenv("ATTNREC_API_KEY")
    f = tmp_path / "attnrec.toml"
    f.write_text(f'model_path = "{ease_bundle}"\napi_key = "from-file"\nmax_k = 7\n')
    s = load_settings(f)
    assert s.write_key == "from-file" and s.max_k == 7 and s.model_path == ease_bundle
    assert load_settings(f, max_k=9).max_k == 9  # arguments win
    f.write_text('model_path = "x"\nmax_kk = 7\n')
    with pytest.raises(ValueError, match="max_kk"):
        load_settings(f)
    assert Settings(model_path="x", database_url="postgresql://a@h/db").database_url == \
        "postgresql+psycopg://a@h/db"


def test_write_endpoints_need_the_key(client):
    ev = {"user": "u", "item": "i1"}
    assert client.post("/events", json=ev).status_code == 401
    assert client.post("/events", json=ev, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/events/batch", json={"events": [ev]}).status_code == 401
    assert client.post("/admin/reload").status_code == 401
    assert client.delete("/users/u").status_code == 401
    assert client.post("/events", json=ev, headers=AUTH).status_code == 201


def test_dev_mode_without_key_accepts_writes(make_client, ease_bundle, sqlite_url):
    c = make_client(ease_bundle, sqlite_url, api_key=None, dev=True)
    assert c.post("/events", json={"user": "u", "item": "i1"}).status_code == 201


@pytest.mark.parametrize("method,path,kw,needle", [
    ("post", "/events", {"json": {"user": "u", "item": "i1", "colour": "red"}}, "colour"),
    ("post", "/events", {"json": {"user": 5, "item": "i1"}}, "user"),
    ("post", "/events", {"json": {"user": "u"}}, "item"),
    ("post", "/events", {"json": {"user": "", "item": "i1"}}, "user"),
    ("post", "/events", {"json": {"user": "u", "item": "i1", "timestamp": "soon"}}, "timestamp"),
    ("post", "/events", {"json": {"user": "u", "item": "i1", "timestamp": -1}}, "timestamp"),
    ("post", "/events", {"content": b"{not json", "headers": {"content-type": "application/json"}}, "JSON"),
    ("post", "/events/batch", {"json": {"events": []}}, "events"),
    ("post", "/events/batch", {"json": {"events": [{"user": "u", "item": "i"}] * 51}}, "batch size"),
    ("post", "/events/batch", {"json": [{"user": "u", "item": "i"}]}, "body"),
    ("get", "/users/u1/recommendations", {"params": {"k": 21}}, "k is 21"),
    ("get", "/users/u1/recommendations", {"params": {"k": 0}}, "k"),
    ("get", "/users/u1/recommendations", {"params": {"k": "ten"}}, "k"),
    ("get", "/users/u1/recommendations", {"params": {"kk": 3}}, "kk"),
    ("get", "/users/u1/recommendations", {"params": {"explain": "maybe"}}, "explain"),
    ("get", "/users/u1/recommendations", {"params": {"exclude": ["i1"] * 31}}, "exclude"),
    ("post", "/recommendations/session", {"json": {"items": ["i1"] * 31}}, "items"),
    ("post", "/recommendations/session", {"json": {"items": ["i1"], "k": 3, "n": 1}}, "n"),
    ("post", "/recommendations/session", {"json": {"items": "i1"}}, "items"),
    ("get", "/items/i1/similar", {"params": {"k": 1000}}, "k is 1000"),
    ("post", "/admin/reload", {"json": {"path": "/nonexistent/bundle"}}, "could not load"),
    ("post", "/admin/reload", {"json": {"path": "/tmp", "force": True}}, "force"),
])
def test_bad_requests_are_clear_4xx(make_client, ease_bundle, sqlite_url, method, path, kw, needle):
    c = make_client(ease_bundle, sqlite_url, max_k=20, max_batch=50, max_history=30)
    kw.setdefault("headers", {}).update(AUTH)
    r = getattr(c, method)(path, **kw)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.headers["x-model-version"].startswith("ease-")
    assert needle in r.text, r.text
    assert c.get("/ready").status_code == 200  # and the service is fine


def test_oversized_body_is_413(make_client, ease_bundle, sqlite_url):
    c = make_client(ease_bundle, sqlite_url, max_body_bytes=4096)
    big = {"events": [{"user": "u" * 200, "item": "i1"}] * 100}
    r = c.post("/events/batch", json=big, headers=AUTH)
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    assert r.headers["x-model-version"].startswith("ease-")

    def chunks():  # no content-length: counted while streaming
        for _ in range(10):
            yield b" " * 1000

    r = c.post("/events/batch", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413


def test_run_refuses_several_workers_and_missing_bundles(ease_bundle, tmp_path):
    from attnrec.serving import run

    with pytest.raises(ValueError, match="one worker"):
        run(ease_bundle, dev=True, workers=0)
    with pytest.raises(FileNotFoundError, match="not a model bundle"):
        run(tmp_path / "nothing-here", dev=True)
