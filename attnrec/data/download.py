"""Public benchmark datasets: download, verify, cache and convert (``attnrec datasets download``).

Every dataset ends up as ``<cache>/<name>/interactions.csv`` with columns
``user_id,item_id,rating,timestamp`` (plus ``items.csv`` with item_id,name,category
where the source has titles), so it loads like any file a user brings.

Archives are verified against a pinned checksum.  Where we do not know the
checksum for certain it is ``None`` in the registry: the first download computes
it, stores it in ``<cache>/<name>/checksums.json`` with a warning, and later
downloads are checked against that (trust on first use), never against an
invented value.

The cache is ``$ATTNREC_CACHE`` or ``~/.cache/attnrec``.  ``base_url`` (or
``$ATTNREC_DATASETS_MIRROR``) fetches ``<base_url>/<filename>`` instead of the
official URL: for mirrors, offline copies and tests.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

log = logging.getLogger(__name__)

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
_DONE_FILE = ".complete.json"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The archive could not be fetched (HTTP error, network unreachable, ...)."""


class ChecksumError(DownloadError):
    """The fetched archive is not the one the registry pins."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    url: str
    filename: str
    converter: str  # key of _CONVERTERS
    description: str
    sha256: str | None = None
    md5: str | None = None
    homepage: str = ""
    license: str = ""


_AMAZON_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
_AMAZON_NOTE = ("Amazon product reviews (2014, 5-core), J. McAuley et al.; "
                "for research use, see https://cseweb.ucsd.edu/~jmcauley/datasets.html")
_ML_NOTE = ("GroupLens MovieLens; acknowledge the source when publishing, no redistribution, "
            "see the dataset README")

REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    """Add (or replace) a dataset in the registry."""
    if spec.converter not in _CONVERTERS:
        raise ValueError(f"unknown converter {spec.converter!r}; known: {sorted(_CONVERTERS)}")
    REGISTRY[spec.name] = spec


def known_datasets() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(known_datasets())
        raise KeyError(f"unknown dataset {name!r}; known datasets: {known}") from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("ATTNREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attnrec"


# --------------------------------------------------------------------------- download


def _fetch(url: str, dest: Path, expected: dict[str, str | None]) -> dict[str, str]:
    """Stream ``url`` to ``dest`` atomically, verifying any pinned digests.

    Returns the computed ``{"sha256": ..., "md5": ...}``.  On any failure the
    partial file is removed and ``dest`` is left untouched.
    """
    part = dest.with_name(dest.name + ".part")
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    log.info("downloading %s", url)
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "attnrec"})
        with urllib.request.urlopen(req, timeout=60) as resp, open(part, "wb") as f:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      unit_divisor=1024, desc=dest.name, disable=None) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        part.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"could not download {url}: {reason} (offline? set ATTNREC_DATASETS_MIRROR "
            "or pass base_url to use a mirror)") from None
    got = {k: h.hexdigest() for k, h in hashes.items()}
    for algo, want in expected.items():
        if want is not None and got[algo] != want.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {url}: expected {algo} {want}, got {got[algo]}; "
                "the partial file was removed (corrupted download or a changed upstream file)")
    os.replace(part, dest)
    return got


def _safe_extract(archive: Path, into: Path) -> None:
    """Unzip, refusing members that would land outside ``into``."""
    root = into.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            target = (root / member).resolve()
            if root != target and root not in target.parents:
                raise DownloadError(
                    f"{archive.name}: refusing to extract {member!r} outside {into}")
        zf.extractall(root)


def download(name: str, cache_dir: str | Path | None = None, base_url: str | None = None,
             force: bool = False) -> Path:
    """Fetch, verify and convert dataset ``name``; returns the interactions CSV path.

    A completed dataset in the cache is returned without touching the network
    unless ``force``.
    """
    spec = get_spec(name)
    ds_dir = cache_root(cache_dir) / name
    out = ds_dir / INTERACTIONS_FILE
    if not force and out.exists() and (ds_dir / _DONE_FILE).exists():
        log.info("%s: using cached %s", name, out)
        return out

    raw_dir = ds_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    base_url = base_url or os.environ.get("ATTNREC_DATASETS_MIRROR")
    url = f"{base_url.rstrip('/')}/{spec.filename}" if base_url else spec.url

    store = ds_dir / "checksums.json"
    stored = json.loads(store.read_text()) if store.exists() else {}
    expected = {"sha256": spec.sha256 or stored.get("sha256"),
                "md5": spec.md5 if spec.sha256 is None else None}
    archive = raw_dir / spec.filename
    (ds_dir / _DONE_FILE).unlink(missing_ok=True)  # a crash below must not look complete
    try:
        got = _fetch(url, archive, expected)
    except ChecksumError as e:
        if spec.sha256 is None and spec.md5 is None:
            raise ChecksumError(
                f"{e}; the expected value was recorded on first download in {store}: "
                "delete it if the upstream file legitimately changed") from None
        raise
    if spec.sha256 is None and spec.md5 is None and not stored:
        log.warning("%s: no pinned checksum; computed sha256 %s on first download and stored "
                    "it in %s for later downloads", name, got["sha256"], store)
        store.write_text(json.dumps({"sha256": got["sha256"], "url": url}, indent=1))

    if zipfile.is_zipfile(archive):
        extract_dir = raw_dir / "extracted"
        shutil.rmtree(extract_dir, ignore_errors=True)
        _safe_extract(archive, extract_dir)
        source = extract_dir
    else:
        source = archive
    n = _CONVERTERS[spec.converter](source, ds_dir)
    (ds_dir / _DONE_FILE).write_text(json.dumps({"url": url, "sha256": got["sha256"],
                                                 "interactions": n}, indent=1))
    log.info("%s: %d interactions written to %s", name, n, out)
    return out


# --------------------------------------------------------------------------- converters


def _find(root: Path, filename: str) -> Path:
    """``filename`` anywhere under ``root`` (archives nest it in a folder)."""
    hits = sorted(root.rglob(filename))
    if not hits:
        raise DownloadError(f"{filename} not found in the extracted archive at {root}")
    return hits[0]


def _write_csv(path: Path, header: list[str], rows: Iterator[list]) -> int:
    """Write atomically so a crash never leaves a half file the cache would trust."""
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    os.replace(tmp, path)
    return n


_INTERACTIONS_HEADER = ["user_id", "item_id", "rating", "timestamp"]


def _convert_ml100k(source: Path, out_dir: Path) -> int:
    def ratings():
        with open(_find(source, "u.data"), encoding="latin-1") as f:
            for line in f:
                if line.strip():
                    yield line.split()[:4]

    def items():
        # u.item: id|title|release|video release|url|19 genre flags
        genres_path = _find(source, "u.genre")
        genres = [ln.split("|")[0] for ln in genres_path.read_text("latin-1").splitlines() if ln]
        with open(_find(source, "u.item"), encoding="latin-1") as f:
            for line in f:
                parts = line.rstrip("\n").split("|")
                if len(parts) < 5:
                    continue
                flags = parts[5:]
                cats = [g for g, on in zip(genres, flags) if on == "1"]
                yield [parts[0], parts[1], "|".join(cats)]

    n = _write_csv(out_dir / INTERACTIONS_FILE, _INTERACTIONS_HEADER, ratings())
    _write_csv(out_dir / ITEMS_FILE, ["item_id", "name", "category"], items())
    return n


def _convert_ml1m(source: Path, out_dir: Path) -> int:
    def rows(filename: str, width: int):
        with open(_find(source, filename), encoding="latin-1") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n").split("::")[:width]

    n = _write_csv(out_dir / INTERACTIONS_FILE, _INTERACTIONS_HEADER, rows("ratings.dat", 4))
    _write_csv(out_dir / ITEMS_FILE, ["item_id", "name", "category"], rows("movies.dat", 3))
    return n


def _convert_amazon_5core(source: Path, out_dir: Path) -> int:
    import ast

    def rows():
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    # some McAuley dumps are Python dict literals, not JSON
                    r = ast.literal_eval(line)
                yield [r["reviewerID"], r["asin"], r.get("overall", ""), r["unixReviewTime"]]

    return _write_csv(out_dir / INTERACTIONS_FILE, _INTERACTIONS_HEADER, rows())


_CONVERTERS: dict[str, Callable[[Path, Path], int]] = {
    "movielens-100k": _convert_ml100k,
    "movielens-1m": _convert_ml1m,
    "amazon-5core": _convert_amazon_5core,
}

# MD5s are the ones GroupLens publishes next to each archive (ml-100k.zip.md5 ...).
for _spec in [
    DatasetSpec("ml-100k", "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                "ml-100k.zip", "movielens-100k",
                "MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies",
                md5="0e33842e24a9c977be4e0107933c0723",
                homepage="https://grouplens.org/datasets/movielens/100k/", license=_ML_NOTE),
    DatasetSpec("ml-1m", "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                "ml-1m.zip", "movielens-1m",
                "MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,706 movies",
                md5="c4d9eecfca2ab87c1945afe126590906",
                homepage="https://grouplens.org/datasets/movielens/1m/", license=_ML_NOTE),
    DatasetSpec("amazon-beauty", _AMAZON_2014 + "reviews_Beauty_5.json.gz",
                "reviews_Beauty_5.json.gz", "amazon-5core",
                "Amazon Beauty reviews, 5-core (2014)",
                homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
                license=_AMAZON_NOTE),
    DatasetSpec("amazon-sports", _AMAZON_2014 + "reviews_Sports_and_Outdoors_5.json.gz",
                "reviews_Sports_and_Outdoors_5.json.gz", "amazon-5core",
                "Amazon Sports and Outdoors reviews, 5-core (2014)",
                homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
                license=_AMAZON_NOTE),
    DatasetSpec("amazon-toys", _AMAZON_2014 + "reviews_Toys_and_Games_5.json.gz",
                "reviews_Toys_and_Games_5.json.gz", "amazon-5core",
                "Amazon Toys and Games reviews, 5-core (2014)",
                homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
                license=_AMAZON_NOTE),
]:
    register(_spec)
