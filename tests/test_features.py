"""Feature loading: RecBole/CSV/Parquet, kinds, alignment, malformed rows reported not raised."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnrec.data.dataset import IdMap
from attnrec.data.features import FeatureSchema, load_features, read_feature_table, read_vectors


@pytest.fixture
def items():
    return IdMap(["a", "b", "c", "d"], offset=1)


def test_recbole_item_file_kinds_and_alignment(tmp_path, items):
    p = tmp_path / "x.item"
    p.write_text(
        "item_id:token\ttitle:token_seq\tyear:float\tgenre:token_seq\tbrand:token\n"
        "b\tThe Big Film\t1999\tAction Comedy\tacme\n"
        "a\tAnother Film\t2001\tDrama\tzeta\n"
        "c\tThird\t2005\tDrama Comedy\tacme\n"
    )
    f = load_features(p, items)
    kinds = {c.name: c.kind for c in f.schema.columns}
    assert kinds == {"title": "text", "year": "numeric", "genre": "multi", "brand": "categorical"}
    # rows follow dense ids, not file order; row 0 is padding
    assert f.raw["title"][1] == "Another Film" and f.raw["title"][2] == "The Big Film"
    vocab = f.schema.vocab["genre"]
    got = {vocab[t - 1] for t in f.categorical["genre"][2] if t}
    assert got == {"Action", "Comedy"}
    assert not f.present[0] and f.present[1:4].all() and not f.present[4]
    # standardised numeric
    assert abs(f.numeric[1:4, 0].mean()) < 1e-5
    assert f.report.missing_ids == ["d"]
    assert f.texts()[2] == "The Big Film"


def test_malformed_rows_are_reported_not_raised(tmp_path, items, caplog):
    p = tmp_path / "items.csv"
    p.write_text(
        "item_id,category,price,description\n"
        "a,shoes,10.5,a red shoe\n"
        "b,socks,not-a-number,warm socks\n"
        "c,shoes,12,too,many,fields\n"
        "zz,hats,3,an unknown item\n"
        "a,shoes,99,duplicate row\n"
        ",shoes,1,no id\n"
    )
    with caplog.at_level("WARNING"):
        f = load_features(p, items, kinds={"category": "categorical", "description": "text",
                                           "price": "numeric"})
    r = f.report
    assert len(r.bad_lines) == 1 and "line 4" in r.bad_lines[0]
    assert r.malformed == {"price": ["b"]}
    assert r.unknown_ids == ["zz"]
    assert r.duplicate_ids == ["a"]
    assert r.empty_ids == 1
    assert sorted(r.missing_ids) == ["c", "d"]
    assert f.numeric[2, 0] == 0.0  # malformed -> mean
    assert f.raw["description"][1] == "a red shoe"  # first row of a duplicate id wins
    assert "malformed" in r.summary() and "features" in caplog.text


def test_parquet_list_columns_and_vectors(tmp_path, items):
    t = pa.table({
        "item_id": ["a", "b", "c"],
        "tags": [["x", "y"], ["y"], None],
        "emb": [[1.0, 0.0], [0.0, 1.0], [1.0, 2.0, 3.0]],  # c has the wrong length
    })
    p = tmp_path / "f.parquet"
    pq.write_table(t, p)
    f = load_features(p, items)
    kinds = {c.name: c.kind for c in f.schema.columns}
    assert kinds == {"tags": "multi", "emb": "vector"}
    np.testing.assert_allclose(f.vectors["emb"][1], [1.0, 0.0])
    assert f.report.malformed == {"emb": ["c"]}
    assert (f.vectors["emb"][3] == 0).all()


def test_npy_vectors_with_ids(tmp_path, items):
    np.save(tmp_path / "v.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    (tmp_path / "ids.txt").write_text("c\na\nnope\n")
    ids, mat = read_vectors(tmp_path / "v.npy", tmp_path / "ids.txt")
    assert ids == ["c", "a", "nope"] and mat.shape == (3, 2)
    p = tmp_path / "i.csv"
    p.write_text("item_id,category\na,x\nb,y\n")
    f = load_features(p, items, vectors=tmp_path / "v.npy", vector_ids=tmp_path / "ids.txt")
    np.testing.assert_allclose(f.vectors["vectors"][3], [0, 1])  # c
    np.testing.assert_allclose(f.vectors["vectors"][1], [2, 3])  # a
    assert "nope" in f.report.unknown_ids


def test_schema_round_trip_and_new_items(tmp_path, items):
    p = tmp_path / "i.csv"
    p.write_text("item_id,category,price\na,x,1\nb,y,3\n")
    f = load_features(p, items)
    schema = FeatureSchema.from_json(f.schema.to_json())
    # a new item, encoded with the fitted vocabulary and statistics
    enc = schema.encode([{"item_id": "new", "category": "y", "price": "2"},
                         {"item_id": "new2", "category": "never-seen", "price": "5"}])
    written = f.update(enc, add_unknown=True)
    assert written == [5, 6] and items.to_dense("new") == 5
    assert f.categorical["category"][5, 0] == schema.vocab["category"].index("y") + 1
    assert f.categorical["category"][6, 0] == 0  # unknown token -> none
    assert f.numeric[5, 0] == pytest.approx(0.0)  # (2 - mean 2) / std


def test_missing_file_and_empty_file(tmp_path, items):
    with pytest.raises(FileNotFoundError):
        load_features(tmp_path / "absent.csv", items)
    p = tmp_path / "e.csv"
    p.write_text("")
    f = load_features(p, items)  # logged, not raised
    assert f.report.missing_ids == ["a", "b", "c", "d"]


@pytest.mark.shared_data
def test_ml100k_item_and_user_files(shared_data):
    from attnrec.data import load_dataset

    data, _ = load_dataset(shared_data / "ml-100k" / "ml-100k.inter")
    f = load_features(shared_data / "ml-100k" / "ml-100k.item", data.item_map)
    assert f.report.rows_used == 1682 and not f.report.missing_ids
    assert len(f.schema.vocab["class"]) == 19  # 18 genres + "unknown"
    u = load_features(shared_data / "ml-100k" / "ml-100k.user", data.user_map,
                      kinds={"age": "numeric"})
    assert u.present.all() and u.numeric.shape == (943, 1)
    raw = read_feature_table(shared_data / "ml-100k" / "ml-100k.item")
    assert raw.types["class"] == "token_seq"
