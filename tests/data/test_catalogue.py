"""The item catalogue reader: every feature-file format, columns matched by role, clear errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnrec.data.catalogue import CatalogueEntry, read_catalogue, write_catalogue
from attnrec.data.errors import DataError


def test_recbole_item_file_like_movielens(tmp_path):
    # the ml-100k.item layout that used to die with KeyError: 'item_id'
    path = tmp_path / "ml.item"
    path.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    )
    cat = read_catalogue(path)
    assert cat == {
        "1": CatalogueEntry("Toy Story", "Animation Children's Comedy", None),
        "2": CatalogueEntry("GoldenEye", "Action Adventure Thriller", None),
    }


def test_csv_tsv_parquet_give_the_same_catalogue(tmp_path):
    csv_path = tmp_path / "items.csv"
    csv_path.write_text('item_id,name,category,description\n7,"Shoe, red",shoes,warm\n8,Sock,,\n7,dup,x,y\n')
    tsv_path = tmp_path / "items.tsv"
    tsv_path.write_text("asin\ttitle\tgenre\n7\tShoe, red\tshoes\n8\tSock\t\n")
    pq_path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"product_id": [7, 8], "name": ["Shoe, red", "Sock"],
                             "category": ["shoes", None]}), pq_path)
    want_names = {"7": "Shoe, red", "8": "Sock"}
    for path in (csv_path, tsv_path, pq_path):
        cat = read_catalogue(path)
        assert {k: e.name for k, e in cat.items()} == want_names, path
        assert cat["7"].category == "shoes" and cat["8"].category is None, path
    assert read_catalogue(csv_path)["7"].description == "warm"  # first row of a repeated id wins


def test_round_trip_through_a_bundle_directory(tmp_path):
    cat = {"a": CatalogueEntry("Alpha", "x", None), "b": CatalogueEntry(None, "y", "long text")}
    write_catalogue(cat, tmp_path / "items.csv")
    assert read_catalogue(tmp_path) == cat
    (tmp_path / "elsewhere").mkdir()
    assert read_catalogue(tmp_path / "elsewhere") == {}  # a bundle without items.csv


@pytest.mark.parametrize("content, message", [
    ("", "the item catalogue file has no usable rows (file is empty)"),
    ("item_id,name\n", "the item catalogue file has no usable rows"),
    ("sku,name\n1,a\n", "no item id column in the catalogue (looked for item_id, id, item"),
    ("item_id,price\n1,3\n", "the item catalogue has no name, category or description column"),
    ("item_id,name\n,a\n", "every row of the item catalogue has an empty 'item_id'"),
])
def test_unusable_catalogues_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "items.csv"
    path.write_text(content)
    with pytest.raises(DataError) as e:
        read_catalogue(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such item catalogue file"):
        read_catalogue(tmp_path / "nope.csv")
