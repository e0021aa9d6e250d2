"""Serving fixtures: tiny models on synthetic data, SQLite and a real PostgreSQL, live servers."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from attnrec.data.dataset import IdMap, SequenceData
from attnrec.data.synthetic import generate
from attnrec.models import EASE, MostPopular

API_KEY = "test-key-0123456789"
AUTH = {"X-API-Key": API_KEY}
SECRET = "test-server-secret-0123456789"


# ---- data and bundles -------------------------------------------------------------
@pytest.fixture(scope="session")
def shop():
    # strong planted rules so the "accessory after product" reaction is a clear signal
    return generate(n_users=500, n_items=120, seed=7, rule_prob=0.9)


@pytest.fixture(scope="session")
def shop_data(shop) -> SequenceData:
    return shop.to_sequences()


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def catalogue_csv(shop, bundles_dir) -> Path:
    raw = shop.write(bundles_dir / "raw")
    return raw / "items.csv"


def _save(model, path: Path, catalogue: Path | None) -> Path:
    model.save(path)
    if catalogue is not None:
        shutil.copy(catalogue, path / "items.csv")
    return path


@pytest.fixture(scope="session")
def ease_model(shop_data):
    return EASE(l2=10.0).fit(shop_data)


@pytest.fixture(scope="session")
def ease_bundle(ease_model, bundles_dir, catalogue_csv) -> Path:
    return _save(ease_model, bundles_dir / "ease", catalogue_csv)


@pytest.fixture(scope="session")
def ease_bundle_plain(ease_model, bundles_dir) -> Path:
    """The same model without a catalogue."""
    return _save(ease_model, bundles_dir / "ease-plain", None)


@pytest.fixture
def own_bundle(tmp_path):
    """``own_bundle(bundle)`` -> a private copy (deletions write the bundle's erasure list)."""
    def copy(bundle: Path) -> Path:
        dst = tmp_path / f"own-{bundle.name}"
        shutil.copytree(bundle, dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def pop_bundle(shop_data, bundles_dir, catalogue_csv) -> Path:
    return _save(MostPopular().fit(shop_data), bundles_dir / "pop", catalogue_csv)


@pytest.fixture(scope="session")
def sasrec_bundle(shop_data, bundles_dir, catalogue_csv) -> Path:
    from attnrec.models.sasrec import SASRec

    m = SASRec(d_model=32, n_layers=2, n_heads=1, max_len=20, epochs=3, batch_size=64,
               dropout=0.1, num_threads=1).fit(shop_data)
    return _save(m, bundles_dir / "sasrec", catalogue_csv)


def extend_data(data: SequenceData, extra: dict[str, list[str]]) -> SequenceData:
    """``data`` plus new users (raw id -> raw items), new items appended to the id map."""
    item_map = IdMap(data.item_map.raw_ids, offset=1)
    user_map = IdMap(data.user_map.raw_ids, offset=0)
    seqs = [list(s) for s in data.sequences()]
    for user, items in extra.items():
        user_map.add(user)
        seqs.append([item_map.add(i) for i in items])
    return SequenceData.from_lists(seqs, len(item_map), user_map=user_map, item_map=item_map)


# ---- databases ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
            return Path(d)
    for exe in ("initdb", "pg_ctl"):
        if shutil.which(exe) is None:
            return None
    return Path(shutil.which("initdb")).parent


@pytest.fixture(scope="session")
def postgres_server():
    """Admin URL of a PostgreSQL server: ATTNREC_TEST_POSTGRES_URL, or a throwaway one."""
    url = os.environ.get("ATTNREC_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql) and "
                    "ATTNREC_TEST_POSTGRES_URL is not set")
    root = Path(tempfile.mkdtemp(prefix="attnrec-pg-"))
    datadir, sockdir = root / "data", root / "sock"
    sockdir.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(datadir), "-A", "trust",
                    "-U", "postgres", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=on"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-o", opts,
                    "-l", str(root / "log"), "-w", "-t", "60", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty database on the server for one test."""
    import psycopg

    name = f"attnrec_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    return request.getfixturevalue(f"{request.param}_url")


# ---- apps and servers ---------------------------------------------------------------------
@pytest.fixture
def make_client(tmp_path):
    """``make_client(bundle, database_url=None, **settings)`` -> a started TestClient."""
    from fastapi.testclient import TestClient

    from attnrec.serving import Settings, create_app

    stack = contextlib.ExitStack()

    def make(bundle: Path, database_url: str | None = None, **kw):
        kw.setdefault("api_key", API_KEY)
        kw.setdefault("watch_model", False)
        kw.setdefault("secret", SECRET)
        settings = Settings(model_path=bundle, database_url=database_url, data_dir=tmp_path / "data", **kw)
        return stack.enter_context(TestClient(create_app(settings)))

    with stack:
        yield make


@pytest.fixture
def client(make_client, ease_bundle, sqlite_url):
    return make_client(ease_bundle, sqlite_url)


class LiveServer:
    """uvicorn in a thread of the test process (fast to start, real sockets and concurrency)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", loop="asyncio"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("live server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(tmp_path):
    from attnrec.serving import Settings, create_app

    stack = contextlib.ExitStack()

    def make(bundle: Path, **kw) -> LiveServer:
        kw.setdefault("api_key", API_KEY)
        kw.setdefault("watch_model", False)
        kw.setdefault("secret", SECRET)
        settings = Settings(model_path=bundle, data_dir=tmp_path / "live-data", **kw)
        return stack.enter_context(LiveServer(create_app(settings)))

    with stack:
        yield make


def user_with_room(data: SequenceData, rules: dict[str, str], n: int, seed: int = 0):
    """``n`` (user, product, accessory) triples where neither item is in the user's history."""
    rng = np.random.default_rng(seed)
    out = []
    products = sorted(p for p in rules if p in data.item_map and rules[p] in data.item_map)
    for u in rng.permutation(data.n_users):
        seen = set(data.item_map.decode(data.sequence(int(u))))
        free = [p for p in products if p not in seen and rules[p] not in seen]
        if free:
            p = free[int(rng.integers(len(free)))]
            out.append((data.user_map.to_raw(int(u)), p, rules[p]))
        if len(out) == n:
            break
    return out
