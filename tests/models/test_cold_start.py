"""Content-aware SASRec: cold catalogue items, add_items without retraining, bundles, text baseline."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from attnrec.data.text import TextEncoder
from attnrec.models.base import Recommender
from attnrec.models.content import ContentSASRec, TextSimilarity


def bow(texts, dim=64):
    """Deterministic bag-of-words hashing 'sentence encoder' (no model download)."""
    import zlib

    out = np.zeros((len(texts), dim), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace(".", " ").replace(",", " ").replace(":", " ").split():
            out[i, zlib.crc32(w.encode()) % dim] += 1.0
    return out


@pytest.fixture
def fake_encoder(monkeypatch, tmp_path):
    def make(self):
        return TextEncoder("bow", cache_dir=tmp_path / "emb", encode_fn=bow, progress=False)

    monkeypatch.setattr(ContentSASRec, "_encoder", make)
    monkeypatch.setattr(TextSimilarity, "_encoder", make)


@pytest.fixture(scope="module")
def shop():
    from attnrec.data.synthetic import generate

    syn = generate(n_users=300, n_items=80, seed=7)
    data = syn.to_sequences()
    cat = syn.catalogue
    # 6 catalogue items nobody bought yet: described but without interactions
    extra = pa.table({
        "item_id": [f"new{i}" for i in range(6)],
        "name": [f"Trail Running Shoe {90 + i}" for i in range(3)]
        + [f"Espresso Coffee {90 + i}" for i in range(3)],
        "category": ["shoes"] * 3 + ["coffee"] * 3,
        "description": ["Lightweight trail running shoe in red: footwear for sport and everyday walking."] * 3
        + ["Bold espresso coffee in black: roasted whole coffee beans."] * 3,
        "price": [90.0] * 3 + [14.0] * 3,
    })
    return syn, data, pa.concat_tables([cat, extra.cast(cat.schema)])


def _model(**kw):
    p = dict(d_model=32, n_layers=1, n_heads=1, max_len=20, epochs=8, lr=3e-3, dropout=0.2,
             item_dropout=0.3, num_threads=1, seed=0,
             text_columns=["name", "category", "description"])
    p.update(kw)
    return ContentSASRec(**p)


def _histories_of(syn, data, categories, n=20, length=5, seed=0):
    """Recent histories made of items from ``categories`` (e.g. shoes and socks)."""
    cat = syn.catalogue.to_pydict()
    items = np.array(sorted(data.item_map.to_dense(i) for i, c in zip(cat["item_id"], cat["category"])
                            if c in categories and i in data.item_map and
                            data.item_map.to_dense(i) <= data.n_items))
    rng = np.random.default_rng(seed)
    return [rng.choice(items, size=min(length, len(items)), replace=False) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(shop, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("emb")
    mp.setattr(ContentSASRec, "_encoder",
               lambda self: TextEncoder("bow", cache_dir=d, encode_fn=bow, progress=False))
    syn, data, catalogue = shop
    model = _model().set_item_features(catalogue).fit(data)
    yield syn, data, model
    mp.undo()


def test_params_include_sasrec_hyperparameters():
    p = ContentSASRec(d_model=16).get_params()
    assert p["d_model"] == 16 and p["item_dropout"] == 0.1 and "item_features" in p


def test_catalogue_items_without_interactions_are_recommendable(trained):
    syn, data, model = trained
    n_before = data.n_items
    assert model.n_items_ == n_before + 6  # catalogue-only items added after fit
    assert data.n_items == n_before and "new0" not in data.item_map  # caller's data untouched
    assert all(model.item_map_.get(f"new{i}") is not None for i in range(6))
    assert model.n_items_ == len(model.item_map_)
    s = model.score([data.sequence(0)])
    assert s.shape == (1, model.n_items_ + 1) and torch.isfinite(s[0, 1:]).all()


def test_new_shoe_is_recommended_to_shoe_lovers_without_retraining(trained, fake_encoder):
    syn, data, model = trained
    weights_before = model.net_.item_emb.weight[1:].clone()
    [dense] = model.add_items([{"item_id": "shoe-x", "name": "Road Running Shoe 77",
                                "category": "shoes", "price": "95",
                                "description": "Durable road running shoe in blue: footwear "
                                               "for sport and everyday walking."}])
    assert torch.equal(model.net_.item_emb.weight[1:len(weights_before) + 1], weights_before)
    shoe_fans = _histories_of(syn, data, {"shoes", "socks"})
    coffee_fans = _histories_of(syn, data, {"coffee", "mugs"})
    assert len(shoe_fans) >= 3 and len(coffee_fans) >= 3
    ids_s, _ = model.recommend(shoe_fans, k=10)
    ids_c, _ = model.recommend(coffee_fans, k=10)
    hit_shoe = np.mean([dense in row for row in ids_s])
    hit_coffee = np.mean([dense in row for row in ids_c])
    assert hit_shoe >= 0.5, hit_shoe
    assert hit_coffee <= 0.2, hit_coffee


def test_bundle_round_trip_then_add_items(trained, tmp_path, fake_encoder):
    syn, data, model = trained
    h = [data.sequence(u) for u in range(5)]
    model.save(tmp_path / "b")
    loaded = Recommender.load(tmp_path / "b")
    assert isinstance(loaded, ContentSASRec)
    torch.testing.assert_close(loaded.score(h), model.score(h))
    [dense] = loaded.add_items([{"item_id": "cup-9", "name": "Espresso Mug 9",
                                 "category": "mugs", "description": "ceramic drinking mug"}])
    assert dense == model.n_items_ + 1 and loaded.score(h).shape[1] == dense + 1


def test_text_similarity_baseline_ranks_cold_items(shop, fake_encoder):
    syn, data, catalogue = shop
    m = TextSimilarity(text_columns=["name", "category", "description"]).set_item_features(catalogue)
    m.fit(data)
    shoe = [m.item_map_.to_dense(f"new{i}") for i in range(3)]
    coffee = [m.item_map_.to_dense(f"new{i}") for i in range(3, 6)]
    s = m.score(_histories_of(syn, data, {"shoes", "socks"}))
    assert (s[:, shoe].min(1).values > s[:, coffee].max(1).values).all()


def test_without_a_catalogue_it_warns_and_works_id_only(shop, caplog):
    _, data, _ = shop
    with caplog.at_level("WARNING"):
        m = _model(epochs=1).fit(data)
    assert "no item_features" in caplog.text
    assert torch.isfinite(m.score([data.sequence(0)])[0, 1:]).all()


def test_adding_items_never_touches_the_callers_data(shop, fake_encoder):
    syn, data, catalogue = shop
    n_before = len(data.item_map)
    m = TextSimilarity(text_columns=["name"]).set_item_features(catalogue).fit(data)
    assert len(m.item_map_) == n_before + 6 and len(data.item_map) == n_before
    assert data.n_items == n_before and m.train_data_.n_items == n_before + 6


def test_loss_excludes_seen_leaves_seen_items_out_of_the_content_softmax(trained):
    _, _, model = trained
    h = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0))
    tgt = torch.tensor([1, 2, 3])
    seen = torch.tensor([[4, 5, 0], [6, 2, 0], [0, 0, 0]])  # row 1 lists its own target: it stays in
    W = model.net_.output_weight()
    logits = (h @ W.T).float().masked_fill((model.net_.counts == 0)[None, :], float("-inf"))
    out = torch.zeros_like(logits, dtype=torch.bool)
    out[0, [4, 5]] = True
    out[1, 6] = True
    want = torch.nn.functional.cross_entropy(logits.masked_fill(out, float("-inf")), tgt)
    torch.testing.assert_close(model._loss(h, tgt, seen), want)
    assert model._loss(h, tgt, seen) < model._loss(h, tgt)


def test_label_smoothing_spreads_only_over_the_items_the_content_loss_ranks(trained, monkeypatch):
    _, _, model = trained
    h = torch.randn(3, model.d_model, generator=torch.Generator().manual_seed(0))
    tgt = torch.tensor([1, 2, 3])
    W = model.net_.output_weight()
    ranked = model.net_.counts > 0  # (V + 1,) items with training events
    assert not bool(ranked.all())  # padding at least is out
    logp = torch.log_softmax((h @ W[ranked].T).float(), dim=1)  # over the ranked items only
    col = torch.cumsum(ranked.long(), 0)[tgt] - 1  # each target's column among them
    want = (0.9 * -logp[torch.arange(3), col] + 0.1 * -logp.mean(1)).mean()
    monkeypatch.setattr(model, "label_smoothing", 0.1)
    got = model._loss(h, tgt)
    torch.testing.assert_close(got, want)
    monkeypatch.setattr(model, "label_smoothing", 0.0)
    assert abs(float(got) - float(model._loss(h, tgt))) > 1e-3  # the option is not ignored
