"""build_sequences: filters, dedupe, k-core, ordering and dense ids."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from attnrec.benchmarking import shared_data
from attnrec.data import (
    InteractionLog,
    LoadReport,
    PreprocessConfig,
    build_sequences,
    dataset_stats,
    format_stats,
    load_dataset,
)

SHARED = shared_data()


def make_log(rows, rating=False, event=False, has_time=True) -> InteractionLog:
    """rows: (user, item, time[, rating][, event]) tuples, in file order."""
    cols = list(zip(*rows))
    return InteractionLog(
        user=np.array(cols[0], dtype=object),
        item=np.array(cols[1], dtype=object),
        timestamp=np.array(cols[2], dtype=np.float64),
        rating=np.array(cols[3], dtype=np.float64) if rating else None,
        event=np.array(cols[-1], dtype=object) if event else None,
        has_time=has_time,
    )


def seqs(data) -> dict[str, list[str]]:
    return {
        data.user_map.to_raw(u): data.item_map.decode(data.sequence(u)) for u in range(data.n_users)
    }


def test_chronological_with_file_order_tie_break():
    log = make_log(
        [
            ("a", "x", 5),
            ("b", "y", 1),
            ("a", "z", 5),  # same time as x: x came first in the file
            ("a", "w", 1),
            ("a", "v", 5),
        ]
    )
    data, report = build_sequences(log)
    assert seqs(data) == {"a": ["w", "x", "z", "v"], "b": ["y"]}
    assert data.timestamps.tolist() == [1, 5, 5, 5, 1]
    assert report.removed == {} and report.interactions == 5
    # deterministic: the same input gives the same output
    again, _ = build_sequences(log)
    assert np.array_equal(again.items, data.items) and again.item_map == data.item_map


def test_dense_ids_numeric_order_and_round_trip():
    log = make_log([("10", "100", 1), ("9", "20", 2), ("2", "3", 3), ("9", "100", 4)])
    data, _ = build_sequences(log)
    # numeric, not lexicographic ("10" < "2" < "9" as strings)
    assert data.user_map.raw_ids == ["2", "9", "10"]
    assert data.item_map.raw_ids == ["3", "20", "100"]
    assert data.item_map.to_dense("3") == 1 and data.user_map.to_dense("2") == 0
    for u in range(data.n_users):  # every interaction maps back to its raw ids
        raw_user = data.user_map.to_raw(u)
        rows = sorted(zip(log.user, log.item, log.timestamp), key=lambda r: r[2])
        expected = [it for us, it, _ in rows if us == raw_user]
        assert data.item_map.decode(data.sequence(u)) == expected
    assert data.item_map.encode(["100", "20"]).tolist() == [3, 2]


def test_dense_ids_lexicographic_when_not_all_integers():
    log = make_log([("u", "b", 1), ("u", "10", 2), ("u", "9", 3), ("u", "a", 4)])
    data, _ = build_sequences(log)
    assert data.item_map.raw_ids == ["10", "9", "a", "b"]


def test_contiguous_integer_ids_keep_their_value():
    items = [str(i) for i in range(1, 13)]
    rng = np.random.default_rng(0)
    rows = [("1", it, t) for t, it in enumerate(rng.permutation(items))]
    data, _ = build_sequences(make_log(rows))
    for raw in items:
        assert data.item_map.to_dense(raw) == int(raw)


def test_dedupe_first_and_last():
    rows = [("a", "1", 1), ("a", "2", 2), ("a", "1", 3), ("b", "1", 7), ("b", "1", 7)]
    data, report = build_sequences(make_log(rows), PreprocessConfig(dedupe="first"))
    assert seqs(data) == {"a": ["1", "2"], "b": ["1"]}
    assert data.timestamps.tolist() == [1, 2, 7]
    assert report.removed == {"dedupe": 2}
    data, _ = build_sequences(make_log(rows), PreprocessConfig(dedupe="last"))
    assert seqs(data) == {"a": ["2", "1"], "b": ["1"]}
    assert data.timestamps.tolist() == [2, 3, 7]
    assert build_sequences(make_log(rows))[0].n_interactions == 5  # "none" keeps repeats


def test_dedupe_uses_time_not_file_order():
    rows = [("a", "1", 9), ("a", "2", 5), ("a", "1", 1)]
    data, _ = build_sequences(make_log(rows), PreprocessConfig(dedupe="first"))
    assert seqs(data) == {"a": ["1", "2"]} and data.timestamps.tolist() == [1, 5]


def test_kcore_needs_several_passes():
    # Pass 1 removes item C (1 interaction); only then does u3 fall below 2.
    rows = [("u1", "A", 1), ("u1", "B", 2), ("u2", "A", 1), ("u2", "B", 2)]
    rows += [("u3", "A", 1), ("u3", "C", 2)]
    cfg = PreprocessConfig(min_user_interactions=2, min_item_interactions=2)
    data, report = build_sequences(make_log(rows), cfg)
    assert seqs(data) == {"u1": ["A", "B"], "u2": ["A", "B"]}
    assert report.removed == {"k_core": 2}
    assert report.kcore_iterations >= 2
    assert data.n_items == 2 and data.item_map.raw_ids == ["A", "B"]


def test_kcore_cascade_empties_everything():
    rows = [("u1", "A", 1), ("u1", "B", 2), ("u2", "B", 1), ("u2", "C", 2), ("u3", "C", 1)]
    cfg = PreprocessConfig(min_user_interactions=2, min_item_interactions=2)
    data, report = build_sequences(make_log(rows), cfg)
    assert data.n_users == 0 and data.n_interactions == 0 and report.removed["k_core"] == 5


def test_rating_threshold_and_event_filter():
    rows = [
        ("a", "1", 1, 5.0, "buy"),
        ("a", "2", 2, 3.5, "buy"),
        ("a", "3", 3, 4.0, "view"),
        ("b", "1", 1, 4.0, "buy"),
    ]
    log = make_log(rows, rating=True, event=True)
    data, report = build_sequences(log, PreprocessConfig(rating_threshold=4.0))
    assert seqs(data) == {"a": ["1", "3"], "b": ["1"]} and report.removed == {"rating_threshold": 1}
    data, report = build_sequences(log, PreprocessConfig(rating_threshold=4.0, event_types=["buy"]))
    assert seqs(data) == {"a": ["1"], "b": ["1"]}
    assert report.removed == {"event_types": 1, "rating_threshold": 1}
    with pytest.raises(ValueError, match="no rating column"):
        build_sequences(make_log([("a", "1", 1)]), PreprocessConfig(rating_threshold=1))
    with pytest.raises(ValueError, match="dedupe"):
        PreprocessConfig(dedupe="all")


def test_report_carries_load_drops_and_no_time():
    log = make_log([("a", "1", 0), ("a", "2", 1)], has_time=False)
    log.report = LoadReport("f.txt", rows_read=3)
    log.report.drop("user with no items")
    data, report = build_sequences(log)
    assert data.timestamps is None
    assert report.load.dropped == {"user with no items": 1}
    assert "user with no items" in report.summary()


def test_stats_formatting():
    data, _ = build_sequences(make_log([("a", "1", 1), ("a", "2", 2), ("b", "1", 1)]))
    stats = dataset_stats(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 2, 3)
    text = format_stats(stats)
    assert "users" in text and "interactions  3" in text and "p95" in text and "max 2" in text


@pytest.mark.shared_data
def test_beauty_loads():
    path = SHARED / "beauty.txt"
    if not path.is_file():
        pytest.skip(f"Amazon Beauty not found at {path} (needs ../shared/data)")
    start = time.perf_counter()
    data, report = load_dataset(path)
    elapsed = time.perf_counter() - start
    assert (data.n_users, data.n_items, data.n_interactions) == (22_363, 12_101, 198_502)
    assert report.load.dropped == {}
    # ids are 1..N: dense ids equal the raw ones
    assert data.item_map.to_raw(7) == "7" and data.user_map.to_raw(0) == "1"
    with path.open() as f:
        first = f.readline().split()
    assert data.item_map.decode(data.sequence(0)) == first[1:]
    assert elapsed < 5.0, f"Beauty took {elapsed:.2f}s to load"  # ~0.3 s normally; shared CPUs
