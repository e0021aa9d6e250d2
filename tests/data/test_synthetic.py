import csv
from collections import Counter

import numpy as np
import pytest

from attnrec.data.synthetic import SyntheticData, generate


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(n_users=600, n_items=240, seed=3)


@pytest.fixture(scope="module")
def seqs(data):
    return data.to_sequences()


def _category_of(data):
    cat = data.catalogue.to_pydict()
    return dict(zip(cat["item_id"], cat["category"]))


def test_deterministic_given_seed():
    a = generate(n_users=150, n_items=120, seed=7)
    b = generate(n_users=150, n_items=120, seed=7)
    c = generate(n_users=150, n_items=120, seed=8)
    for col in ("user", "item", "timestamp", "event"):
        np.testing.assert_array_equal(getattr(a.log, col), getattr(b.log, col))
    assert a.catalogue.equals(b.catalogue)
    assert a.rules == b.rules
    assert not (len(a.log) == len(c.log) and np.array_equal(a.log.item, c.log.item))


def test_default_size_fits_the_demo():
    d = generate()
    n_users = len(np.unique(d.log.user))
    per_user = len(d.log) / n_users
    assert n_users == 2000 and d.catalogue.num_rows == 400
    assert 20 <= per_user <= 40


def test_catalogue_structure(data):
    cat = data.catalogue.to_pydict()
    assert data.catalogue.column_names == ["item_id", "name", "category", "description", "price"]
    assert len(cat["item_id"]) == 240 == len(set(cat["item_id"])) == len(set(cat["name"]))
    assert all(i.startswith("i") for i in cat["item_id"])
    assert 8 <= len(set(cat["category"])) <= 12
    assert all(p > 0 for p in cat["price"])
    assert all(len(d.split()) >= 5 for d in cat["description"])


def test_rules_pair_products_with_their_accessory_category(data):
    category = _category_of(data)
    pairs = Counter((category[p], category[a]) for p, a in data.rules.items())
    assert ("shoes", "socks") in pairs and ("cameras", "memory cards") in pairs
    # each product category maps to exactly one accessory category
    assert len({p for p, _ in pairs}) == len(pairs)
    assert len(set(data.rules.values())) == len(data.rules)  # one accessory per product


def test_text_similarity_reflects_the_pairing(data):
    cat = data.catalogue.to_pydict()
    desc = {i: set(d.lower().replace(",", " ").replace(".", " ").split())
            for i, d in zip(cat["item_id"], cat["description"])}
    accessories = list(data.rules.values())

    def jaccard(a, b):
        return len(desc[a] & desc[b]) / len(desc[a] | desc[b])

    rng = np.random.default_rng(0)
    true = np.mean([jaccard(p, a) for p, a in data.rules.items()])
    other = np.mean([jaccard(p, accessories[rng.integers(len(accessories))])
                     for p in data.rules])
    assert true > 2 * other


def test_planted_accessory_follows_its_product(data, seqs):
    im = seqs.item_map
    rules = {im.to_dense(p): im.to_dense(a) for p, a in data.rules.items()
             if p in im and a in im}
    hits = n = 0
    wrong_hits = 0
    accessories = np.array(sorted(rules.values()))
    rng = np.random.default_rng(0)
    for seq in seqs.sequences():
        seq = seq.tolist()
        for i, x in enumerate(seq):
            if x in rules:
                n += 1
                nxt = seq[i + 1 : i + 3]
                hits += rules[x] in nxt
                decoy = rules[x]
                while decoy == rules[x]:
                    decoy = int(accessories[rng.integers(len(accessories))])
                wrong_hits += decoy in nxt
    assert n > 1000
    rate, chance = hits / n, wrong_hits / n
    assert 0.55 <= rate <= 0.8, rate
    assert rate > 20 * max(chance, 1e-3), (rate, chance)


def test_log_is_chronological_per_user_without_repeats(seqs):
    for u in range(seqs.n_users):
        lo, hi = seqs.indptr[u], seqs.indptr[u + 1]
        assert np.all(np.diff(seqs.timestamps[lo:hi]) > 0)
        assert len(set(seqs.items[lo:hi].tolist())) == hi - lo
    assert seqs.timestamps.min() > 1.6e9  # epoch seconds, not positions


def test_popularity_is_skewed(seqs):
    counts = np.sort(seqs.item_counts()[1:])[::-1]
    top_decile = counts[: len(counts) // 10].sum() / counts.sum()
    assert top_decile > 0.2  # uniform would be 0.1


def test_interests_are_coherent_and_drift(data, seqs):
    category = _category_of(data)
    group = {c: i for i, c in enumerate(sorted(set(category.values())))}
    # products and their accessories share an interest: map accessory -> product category
    for p, a in data.rules.items():
        group[category[a]] = group[category[p]]
    g = np.array([group[category[r]] for r in seqs.item_map.raw_ids])
    near, far = [], []
    for seq in seqs.sequences():
        s = g[seq - 1]
        near.append(np.mean(s[3:] == s[:-3]))
        far.append(np.mean(s[18:] == s[:-18]))
    near, far = np.mean(near), np.mean(far)
    assert near > 0.4  # a user's events stay within a few interests ...
    assert far < near - 0.05  # ... that change over time


def test_to_sequences_matches_log(data, seqs):
    assert seqs.n_interactions == len(data.log)
    assert seqs.user_map.raw_ids == sorted(set(data.log.user.tolist()))
    assert seqs.item_map.raw_ids == sorted(set(data.log.item.tolist()))
    assert seqs.items.min() >= 1 and seqs.items.max() == seqs.n_items
    # the first user's sequence, decoded, is their log events in time order
    u = seqs.user_map.raw_ids[0]
    mask = data.log.user == u
    order = np.argsort(data.log.timestamp[mask], kind="stable")
    assert seqs.item_map.decode(seqs.sequence(0)) == data.log.item[mask][order].tolist()


def test_write_produces_readable_csvs(tmp_path):
    d = generate(n_users=40, n_items=60, seed=1)
    d.write(tmp_path)
    with open(tmp_path / "interactions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["user_id", "item_id", "timestamp", "event_type"]
    assert len(rows) == len(d.log)
    assert rows[0]["user_id"] == d.log.user[0] and rows[0]["item_id"] == d.log.item[0]
    assert int(rows[0]["timestamp"]) == int(d.log.timestamp[0])
    with open(tmp_path / "items.csv", newline="") as f:
        items = list(csv.DictReader(f))
    assert list(items[0])[:4] == ["item_id", "name", "category", "description"]
    cat = d.catalogue.to_pydict()
    assert [r["description"] for r in items] == cat["description"]  # commas survive quoting


def test_written_files_load_like_to_sequences(tmp_path):
    from attnrec.data.preprocess import load_dataset

    d = generate(n_users=50, n_items=60, seed=2)
    d.write(tmp_path)
    loaded, _ = load_dataset(tmp_path / "interactions.csv")
    direct = d.to_sequences()
    np.testing.assert_array_equal(loaded.indptr, direct.indptr)
    np.testing.assert_array_equal(loaded.items, direct.items)
    np.testing.assert_array_equal(loaded.timestamps, direct.timestamps)
    assert loaded.item_map == direct.item_map and loaded.user_map == direct.user_map
