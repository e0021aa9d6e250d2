"""Download tests against a loopback HTTP server; nothing here touches the internet."""

import csv
import gzip
import hashlib
import io
import json
import logging
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from attnrec.data import download as dl
from attnrec.data.download import ChecksumError, DatasetSpec, DownloadError, download


class _Handler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    httpd.requests = []
    # short poll interval: shutdown() otherwise waits up to 0.5 s per test
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    httpd.root = root
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNREC_DATASETS_MIRROR", raising=False)


def _ml100k_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/u.data",
                    "1\t10\t5\t881250949\n2\t20\t3\t891717742\n1\t20\t4\t878887116\n")
        zf.writestr("ml-100k/u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
        zf.writestr("ml-100k/u.item",
                    "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
                    "20|Heat, The (1995)|01-Jan-1995||http://y|0|1|1\n")
    return buf.getvalue()


def _spec(name="tiny-ml", filename="tiny-ml.zip", converter="movielens-100k", **kw):
    return DatasetSpec(name, f"http://127.0.0.1:9/{filename}", filename, converter, "test", **kw)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_download_verifies_converts_and_caches(server, monkeypatch, tmp_path):
    data = _ml100k_zip()
    (server.root / "tiny-ml.zip").write_bytes(data)
    monkeypatch.setitem(dl.REGISTRY, "tiny-ml", _spec(sha256=hashlib.sha256(data).hexdigest()))

    out = download("tiny-ml", base_url=server.url)
    assert out == tmp_path / "cache" / "tiny-ml" / "interactions.csv"
    assert _read(out) == [["user_id", "item_id", "rating", "timestamp"],
                          ["1", "10", "5", "881250949"], ["2", "20", "3", "891717742"],
                          ["1", "20", "4", "878887116"]]
    assert _read(out.parent / "items.csv")[1:] == [["10", "Toy Story (1995)", "Comedy"],
                                                   ["20", "Heat, The (1995)", "Action|Comedy"]]
    assert server.requests == ["/tiny-ml.zip"]

    assert download("tiny-ml", base_url=server.url) == out  # cache hit
    assert len(server.requests) == 1
    download("tiny-ml", base_url=server.url, force=True)
    assert len(server.requests) == 2


def test_mirror_from_environment(server, monkeypatch):
    data = _ml100k_zip()
    (server.root / "tiny-ml.zip").write_bytes(data)
    monkeypatch.setitem(dl.REGISTRY, "tiny-ml", _spec(md5=hashlib.md5(data).hexdigest()))
    monkeypatch.setenv("ATTNREC_DATASETS_MIRROR", server.url + "/")
    assert download("tiny-ml").exists()
    assert server.requests == ["/tiny-ml.zip"]


def test_checksum_mismatch_removes_partial_file(server, tmp_path):
    # the registry pins the real GroupLens md5, so a fake archive must be rejected
    (server.root / "ml-100k.zip").write_bytes(_ml100k_zip())
    with pytest.raises(ChecksumError, match="checksum mismatch.*0e33842e24a9c977be4e0107933c0723"):
        download("ml-100k", base_url=server.url)
    ds = tmp_path / "cache" / "ml-100k"
    assert not list((ds / "raw").iterdir())  # neither the archive nor a .part
    assert not (ds / "interactions.csv").exists()


def test_unknown_name_lists_known_datasets():
    with pytest.raises(KeyError, match="unknown dataset 'ml-2m'.*amazon-beauty.*ml-100k.*ml-1m"):
        download("ml-2m")


def test_http_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download("ml-1m", base_url=server.url)
    assert not (tmp_path / "cache" / "ml-1m" / "raw" / "ml-1m.zip.part").exists()


def test_unreachable_host_mentions_mirror(monkeypatch):
    # port 9 on loopback: nothing listens, the connection is refused at once
    with pytest.raises(DownloadError, match="ATTNREC_DATASETS_MIRROR"):
        download("ml-100k", base_url="http://127.0.0.1:9")


def test_unpinned_checksum_is_recorded_then_enforced(server, monkeypatch, tmp_path, caplog):
    records = [{"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
               {"reviewerID": "A2", "asin": "B02", "overall": 3.0, "unixReviewTime": 1400000100}]
    lines = json.dumps(records[0]) + "\n" + repr(records[1]) + "\n"  # JSON and dict-literal lines
    (server.root / "beauty.json.gz").write_bytes(gzip.compress(lines.encode()))
    monkeypatch.setitem(dl.REGISTRY, "tiny-amazon",
                        _spec("tiny-amazon", "beauty.json.gz", "amazon-5core"))

    with caplog.at_level(logging.WARNING, logger="attnrec.data.download"):
        out = download("tiny-amazon", base_url=server.url)
    assert "no pinned checksum" in caplog.text
    assert _read(out) == [["user_id", "item_id", "rating", "timestamp"],
                          ["A1", "B01", "5.0", "1400000000"], ["A2", "B02", "3.0", "1400000100"]]
    stored = json.loads((out.parent / "checksums.json").read_text())
    served = (server.root / "beauty.json.gz").read_bytes()
    assert stored["sha256"] == hashlib.sha256(served).hexdigest()

    # upstream changes: the recorded checksum now catches it
    (server.root / "beauty.json.gz").write_bytes(gzip.compress(b"{}\n"))
    with pytest.raises(ChecksumError, match="checksums.json"):
        download("tiny-amazon", base_url=server.url, force=True)


def test_ml1m_converter(server, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", "1::1193::5::978300760\n2::661::3::978302109\n")
        zf.writestr("ml-1m/movies.dat",
                    "1193::One Flew Over (1975)::Drama\n661::Giant Peach::Animation|Musical\n")
    (server.root / "ml-1m.zip").write_bytes(buf.getvalue())
    monkeypatch.setitem(dl.REGISTRY, "ml-1m",
                        _spec("ml-1m", "ml-1m.zip", "movielens-1m",
                              sha256=hashlib.sha256(buf.getvalue()).hexdigest()))
    out = download("ml-1m", base_url=server.url)
    assert _read(out)[1:] == [["1", "1193", "5", "978300760"], ["2", "661", "3", "978302109"]]
    assert _read(out.parent / "items.csv")[2] == ["661", "Giant Peach", "Animation|Musical"]


def test_zip_slip_is_refused(server, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.txt", "x")
    (server.root / "evil.zip").write_bytes(buf.getvalue())
    monkeypatch.setitem(dl.REGISTRY, "evil",
                        _spec("evil", "evil.zip",
                              sha256=hashlib.sha256(buf.getvalue()).hexdigest()))
    with pytest.raises(DownloadError, match="refusing to extract"):
        download("evil", base_url=server.url)


def test_registry_pins_only_published_checksums():
    assert dl.REGISTRY["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert dl.REGISTRY["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert dl.REGISTRY["amazon-beauty"].sha256 is None and dl.REGISTRY["amazon-beauty"].md5 is None
    assert all(s.url.startswith("http") for s in dl.REGISTRY.values())
