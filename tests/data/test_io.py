"""Readers: every format round trips to the same sequences; errors point at the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnrec.benchmarking import shared_data
from attnrec.data import (
    ColumnMap,
    DataError,
    build_sequences,
    detect_format,
    load_dataset,
    read_interactions,
    read_log,
    read_recbole,
    read_recbole_table,
    read_sequences,
)

SHARED = shared_data()

# user, item, timestamp, rating -- deliberately not in chronological order in the file
ROWS = [
    ("u2", "10", 300, 4.0),
    ("u1", "7", 100, 5.0),
    ("u1", "3", 50, 2.0),
    ("u2", "7", 200, 3.0),
    ("u3", "3", 10, 1.0),
    ("u1", "10", 400, 4.5),
]


HEADER = ("user_id", "item_id", "timestamp", "rating")


def write_csv(path: Path, sep: str = ",", header=HEADER) -> Path:
    lines = [sep.join(header)] + [sep.join(map(str, r)) for r in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_same(a, b) -> None:
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.items, b.items)
    assert a.n_items == b.n_items
    assert a.user_map == b.user_map and a.item_map == b.item_map
    if a.timestamps is None or b.timestamps is None:
        assert a.timestamps is None and b.timestamps is None
    else:
        assert np.array_equal(a.timestamps, b.timestamps)


@pytest.fixture
def reference(tmp_path):
    data, _ = load_dataset(write_csv(tmp_path / "ref.csv"))
    return data


def test_reference_content(reference):
    # users sorted u1,u2,u3; items numeric order 3,7,10 -> 1,2,3
    assert reference.user_map.raw_ids == ["u1", "u2", "u3"]
    assert reference.item_map.raw_ids == ["3", "7", "10"]
    assert [reference.item_map.decode(s) for s in reference.sequences()] == [
        ["3", "7", "10"],
        ["7", "10"],
        ["3"],
    ]
    assert reference.timestamps.tolist() == [50, 100, 400, 200, 300, 10]


def test_round_trip_tsv(tmp_path, reference):
    assert_same(load_dataset(write_csv(tmp_path / "x.tsv", sep="\t"))[0], reference)


def test_round_trip_parquet(tmp_path, reference):
    cols = list(zip(*ROWS))
    table = pa.table(
        {name: list(col) for name, col in zip(HEADER, cols)}
    )
    pq.write_table(table, tmp_path / "x.parquet")
    assert_same(load_dataset(tmp_path / "x.parquet")[0], reference)


def test_round_trip_parquet_integer_ids(tmp_path):
    table = pa.table({"user_id": [1, 1, 2], "item_id": [7, 3, 7], "timestamp": [2, 1, 5]})
    pq.write_table(table, tmp_path / "x.parquet")
    log = read_log(tmp_path / "x.parquet")
    assert log.user.tolist() == ["1", "1", "2"] and log.item.tolist() == ["7", "3", "7"]


def test_round_trip_jsonl(tmp_path, reference):
    path = tmp_path / "x.jsonl"
    path.write_text(
        "\n".join(json.dumps(dict(zip(HEADER, r))) for r in ROWS)
    )
    assert_same(load_dataset(path)[0], reference)


def test_jsonl_mixed_id_types(tmp_path, reference):
    # ids written as numbers on some lines and strings on others: pyarrow refuses, we don't
    path = tmp_path / "x.jsonl"
    recs = [dict(zip(("user_id", "item_id", "timestamp", "rating"), r)) for r in ROWS]
    recs[0]["item_id"] = 10
    path.write_text("\n".join(json.dumps(r) for r in recs))
    assert_same(load_dataset(path)[0], reference)


def test_round_trip_json_array(tmp_path, reference):
    path = tmp_path / "x.json"
    path.write_text(json.dumps([dict(zip(HEADER, r)) for r in ROWS]))
    assert_same(load_dataset(path)[0], reference)


def test_round_trip_recbole(tmp_path, reference):
    header = ("user_id:token", "item_id:token", "timestamp:float", "rating:float")
    path = write_csv(tmp_path / "toy.inter", sep="\t", header=header)
    assert_same(load_dataset(path)[0], reference)
    # a directory or a prefix also works
    assert_same(load_dataset(tmp_path)[0], reference)
    assert_same(build_sequences(read_recbole(tmp_path / "toy"))[0], reference)
    assert read_recbole(path).rating.tolist() == [r[3] for r in ROWS]


def test_round_trip_sequence_format(tmp_path, reference):
    path = tmp_path / "seq.txt"
    path.write_text("u1 3 7 10\nu2 7 10\n\nu3 3\n")
    data, _ = load_dataset(path)
    assert data.timestamps is None
    assert np.array_equal(data.indptr, reference.indptr)
    assert np.array_equal(data.items, reference.items)
    assert data.user_map == reference.user_map and data.item_map == reference.item_map


def test_sequence_positions_and_user_only_lines(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("  a 5 6 7  \r\nb\na 8\n")
    log = read_sequences(path)
    assert not log.has_time
    assert log.user.tolist() == ["a", "a", "a", "a"]
    assert log.item.tolist() == ["5", "6", "7", "8"]
    assert log.timestamp.tolist() == [0, 1, 2, 3]  # positions continue on the user's next line
    assert log.report.dropped == {"user with no items": 1}
    assert log.report.examples["user with no items"] == ["line 2: user 'b'"]
    data, _ = build_sequences(log)
    assert data.item_map.decode(data.sequence(0)) == ["5", "6", "7", "8"]


def test_sequence_malformed_line(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("1 2 3\n2 4 5\n3,6,7\n")
    with pytest.raises(DataError) as e:
        read_sequences(path)
    assert e.value.line == 3 and "line 3" in str(e.value)


def test_txt_dispatch(tmp_path):
    seq = tmp_path / "a.txt"
    seq.write_text("1 2 3\n")
    assert not read_log(seq).has_time
    delim = tmp_path / "b.txt"
    delim.write_text("user_id,item_id,timestamp\n1,2,3\n")
    assert read_log(delim).has_time


def test_iso_timestamps(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(
        "user_id,item_id,timestamp\n"
        "a,1,2020-01-01T00:00:00Z\n"
        "a,2,2020-01-01 00:00:10\n"
        "a,3,2020-01-01T01:00:20+01:00\n"
        "a,4,2020-01-02\n"
        "a,5,1577836800.5\n"
        "a,6,2020-01-01T00:01\n"
        "a,7,2020-01-01T00:00:00.250000000Z\n"
    )
    log = read_interactions(path)
    base = 1577836800.0  # 2020-01-01T00:00:00Z
    assert log.timestamp.tolist() == [
        base, base + 10, base + 20, base + 86400, base + 0.5, base + 60, base + 0.25
    ]


def test_many_bad_values_are_counted_quickly(tmp_path):
    path = tmp_path / "t.csv"
    n = 20_000
    path.write_text("user,item,time,rating\n" + "".join(f"u{i},{i},later,x{i}\n" for i in range(n)))
    log = read_interactions(path, on_bad_lines="skip")
    # every row is bad in two columns but is counted once, under its first bad column
    assert len(log) == 0 and log.report.dropped == {"bad timestamp": n}
    assert len(log.report.examples["bad timestamp"]) == 5


def test_column_mapping(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("who;what;when;stars;kind\nx;i1;5;3;view\nx;i2;2;5;buy\n")
    cols = ColumnMap(user="who", item="what", timestamp="when", rating="stars", event="kind")
    log = read_interactions(path, cols)
    assert log.user.tolist() == ["x", "x"] and log.item.tolist() == ["i1", "i2"]
    assert log.timestamp.tolist() == [5, 2] and log.rating.tolist() == [3, 5]
    assert log.event.tolist() == ["view", "buy"]
    # no timestamp column: file order stands in for time
    log = read_interactions(path, ColumnMap(user="who", item="what", timestamp=None))
    assert not log.has_time and log.timestamp.tolist() == [0, 1]


def test_auto_column_aliases(tmp_path):
    path = tmp_path / "ml.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    log = read_interactions(path)
    assert log.item.tolist() == ["31"] and log.rating.tolist() == [2.5]


def test_missing_column_error(tmp_path):
    path = write_csv(tmp_path / "t.csv")
    with pytest.raises(DataError) as e:
        read_interactions(path, ColumnMap(user="user_id", item="product", timestamp="time"))
    msg = str(e.value)
    assert "'product'" in msg and "'time'" in msg  # what is missing
    assert "'user_id'" in msg and "'rating'" in msg  # what exists
    assert msg.startswith(str(path))


def test_empty_and_header_only(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        read_interactions(empty)
    header = tmp_path / "h.csv"
    header.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match="header but no data"):
        read_interactions(header)
    empty_seq = tmp_path / "e.txt"
    empty_seq.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_log(empty_seq)


def test_non_numeric_timestamp_names_line_and_column(tmp_path):
    path = tmp_path / "data.csv"
    rows = [f"u{i},{i},{1000 + i}" for i in range(15)]
    rows[14] = "u14,14,abc"  # file line 16 (header is line 1) ...
    body = "\n".join(rows[:5]) + "\n\n" + "\n".join(rows[5:])
    path.write_text("user_id,item_id,timestamp\n" + body + "\n")
    with pytest.raises(DataError) as e:
        read_interactions(path)
    assert e.value.line == 17  # ... plus one blank line
    assert e.value.column == "timestamp"
    assert str(e.value) == (
        f"{path}, line 17, column 'timestamp': 'abc' is not a number or an ISO-8601 datetime"
    )


def test_empty_ids_are_never_lost(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("user_id,item_id,timestamp\na,1,1\n,2,2\nb,,3\nc,3,4\n")
    with pytest.raises(DataError) as e:
        read_interactions(path)
    assert e.value.line == 3 and e.value.column == "user_id"
    log = read_interactions(path, on_bad_lines="skip")
    assert log.user.tolist() == ["a", "c"]
    assert log.report.dropped == {"empty user id": 1, "empty item id": 1}
    assert log.report.rows_read == 4 and log.report.rows_kept == 2


@pytest.fixture(scope="module")
def big_csv(tmp_path_factory):
    """~50k lines with a single line of the wrong width deep inside."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    n = 50_000
    rng = np.random.default_rng(0)
    u, i, t = rng.integers(0, 5000, n), rng.integers(1, 3000, n), rng.integers(0, 10**9, n)
    lines = ["user_id,item_id,timestamp"] + [f"{a},{b},{c}" for a, b, c in zip(u, i, t)]
    bad_line = 43_217  # 1-based line number in the file
    lines[bad_line - 1] = "17,42"
    path.write_text("\n".join(lines) + "\n")
    return path, bad_line, n


def test_broken_line_deep_inside_big_file(big_csv):
    path, bad_line, n = big_csv
    with pytest.raises(DataError) as e:
        read_interactions(path)
    assert e.value.line == bad_line
    assert f"line {bad_line}" in str(e.value) and "expected 3 fields" in str(e.value)
    log = read_interactions(path, on_bad_lines="skip")
    assert len(log) == n - 1
    assert log.report.dropped == {"wrong number of fields": 1}
    assert log.report.examples["wrong number of fields"][0].startswith(f"line {bad_line}:")


def test_bad_value_deep_inside_big_file(tmp_path, big_csv):
    path, _, n = big_csv
    lines = path.read_text().splitlines()
    lines[43_216] = "17,42,1"  # repair the width problem
    lines[31_000] = "5,6,not-a-time"
    lines[31_001] = "5,6,2021-13-45"  # matches the shape of a date but is not one
    p2 = tmp_path / "vals.csv"
    p2.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_interactions(p2)
    assert e.value.line == 31_001 and e.value.column == "timestamp"
    log = read_interactions(p2, on_bad_lines="skip")
    assert len(log) == n - 2 and log.report.dropped == {"bad timestamp": 2}
    where = [x.split(":")[0] for x in log.report.examples["bad timestamp"]]
    assert where == ["line 31001", "line 31002"]


def test_jsonl_malformed_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"user_id": "a", "item_id": "1"}\n'
        "\n"
        '{"user_id": "b", "item_id": \n'
        '{"user_id": "c", "item_id": "2"}\n'
    )
    with pytest.raises(DataError) as e:
        read_log(path)
    assert e.value.line == 3
    log = read_log(path, on_bad_lines="skip")
    assert log.user.tolist() == ["a", "c"] and log.report.dropped == {"malformed JSON line": 1}


def test_parquet_bad_value_names_row(tmp_path):
    table = pa.table({"user_id": ["a", "b"], "item_id": ["1", "2"], "timestamp": ["5", "x"]})
    pq.write_table(table, tmp_path / "p.parquet")
    with pytest.raises(DataError) as e:
        read_log(tmp_path / "p.parquet")
    assert e.value.row == 2 and e.value.column == "timestamp"


def test_unknown_extension(tmp_path):
    path = tmp_path / "x.xlsx"
    path.write_text("whatever")
    with pytest.raises(DataError, match="--format"):
        read_log(path)
    # an override reads it anyway
    path.write_text("user_id,item_id,timestamp\n1,2,3\n")
    assert len(read_log(path, format="csv")) == 1


def test_recbole_table(tmp_path):
    path = tmp_path / "toy.item"
    path.write_text(
        "item_id:token\ttitle:token_seq\tyear:float\n"
        '1\tToy "Story"\t1995\n'
        "2\tHeat\t1995\n"
    )
    table = read_recbole_table(path)
    assert table.column_names == ["item_id", "title", "year"]
    assert table["title"].to_pylist() == ['Toy "Story"', "Heat"]
    assert table["year"].type == pa.float64()
    assert json.loads(table.schema.metadata[b"recbole_types"])["title"] == "token_seq"


@pytest.mark.shared_data
def test_ml100k_loads():
    if not (SHARED / "ml-100k" / "ml-100k.inter").is_file():
        pytest.skip(f"MovieLens 100K not found at {SHARED / 'ml-100k'} (needs ../shared/data)")
    data, report = load_dataset(SHARED / "ml-100k" / "ml-100k.inter")
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1682, 100_000)
    assert data.timestamps is not None
    for u in range(data.n_users):  # chronological within each user
        s = data.timestamps[data.indptr[u] : data.indptr[u + 1]]
        assert np.all(np.diff(s) >= 0)
    items = read_recbole_table(SHARED / "ml-100k" / "ml-100k.item")
    assert items.num_rows == 1682 and "class" in items.column_names


def test_one_dispatcher_for_interactions_and_features(tmp_path):
    from attnrec.data.features import read_feature_table

    seq = tmp_path / "s.txt"
    seq.write_text("u1 a b c\n")
    assert detect_format(seq) == "sequence"
    with pytest.raises(DataError, match="sequence-per-line file has no columns"):
        read_interactions(seq)
    item = tmp_path / "x.item"
    item.write_text("item_id:token\tname:token_seq\n1\tA b\n")
    assert detect_format(item) == "recbole"
    hidden = tmp_path / "x.csv"  # a RecBole header under another extension
    hidden.write_text("item_id:token\tname:token_seq\n1\tA b\n")
    assert detect_format(hidden) == "recbole"
    assert read_feature_table(hidden).types == {"item_id": "token", "name": "token_seq"}
    odd = tmp_path / "x.dat"
    odd.write_text("item_id;name\n1;A\n")
    with pytest.raises(DataError, match="--format"):
        detect_format(odd)
    assert detect_format(odd, default="csv") == "csv"  # what the feature reader asks for
    assert read_feature_table(odd).table.to_pylist() == [{"item_id": "1", "name": "A"}]
    with pytest.raises(DataError, match="feature files are CSV/TSV, Parquet or RecBole"):
        read_feature_table(seq)
