import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnrec.data.dataset import SequenceData
from attnrec.data.splits import leave_one_out, temporal_split
from attnrec.data.synthetic import generate


def _seqs(split_data: SequenceData) -> list[list[int]]:
    return [s.tolist() for s in split_data.sequences()]


def _cases(es) -> list[tuple[int, list[int], list[int]]]:
    return [(int(es.users[i]), es.history(i).tolist(), es.targets(i).tolist())
            for i in range(len(es))]


@pytest.fixture
def toy() -> SequenceData:
    seqs = [[1, 2, 3, 4], [5, 6, 7], [8, 9], [10], []]
    times = [[10, 20, 30, 40], [15, 25, 35], [5, 50], [12], []]
    return SequenceData.from_lists(seqs, n_items=10, timestamps=times)


def test_leave_one_out_exact_contents(toy):
    s = leave_one_out(toy)
    assert _seqs(s.train) == [[1, 2], [5], [8], [10], []]
    assert _seqs(s.train_full) == [[1, 2, 3], [5, 6], [8], [10], []]
    assert _cases(s.valid) == [(0, [1, 2], [3]), (1, [5], [6])]
    assert _cases(s.test) == [(0, [1, 2, 3], [4]), (1, [5, 6], [7]), (2, [8], [9])]
    np.testing.assert_array_equal(s.train_full.timestamps, [10, 20, 30, 15, 25, 5, 12])
    assert s.test.meta["protocol"] == "leave-one-out" == s.valid.meta["protocol"]
    assert s.test.meta["n_cases"] == 3 and s.valid.meta["n_cases"] == 2
    assert s.test.meta["n_users_1_item"] == 1 and s.test.meta["n_users_2_items"] == 1
    assert s.valid.name == "valid" and s.test.name == "test"
    assert "leave-one-out" in s.protocol
    assert s.train.user_map is toy.user_map and s.train.n_items == 10


def test_splits_do_not_mutate_input(toy):
    before = (toy.indptr.copy(), toy.items.copy(), toy.timestamps.copy())
    leave_one_out(toy, n_eval_users=2, seed=1)
    temporal_split(toy, test_start=30, valid_start=20)
    for a, b in zip(before, (toy.indptr, toy.items, toy.timestamps)):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def synth() -> SequenceData:
    return generate(n_users=300, n_items=120, seed=5).to_sequences()


def test_leave_one_out_sampling_is_reproducible(synth):
    a = leave_one_out(synth, n_eval_users=50, seed=1)
    b = leave_one_out(synth, n_eval_users=50, seed=1)
    c = leave_one_out(synth, n_eval_users=50, seed=2)
    np.testing.assert_array_equal(a.test.users, b.test.users)
    assert len(a.test) == 50 and not np.array_equal(a.test.users, c.test.users)
    # same users for valid and test (all synthetic users have >= 3 events)
    np.testing.assert_array_equal(a.valid.users, a.test.users)
    # sampling only limits evaluation: everyone still trains
    assert a.train_full.n_interactions == synth.n_interactions - synth.n_users


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 20), max_size=7), max_size=12))
def test_leave_one_out_invariants(seqs):
    data = SequenceData.from_lists(seqs, n_items=20)
    s = leave_one_out(data)
    for u, seq in enumerate(seqs):
        tr, tf = s.train.sequence(u).tolist(), s.train_full.sequence(u).tolist()
        assert tf == (seq[:-1] if len(seq) >= 2 else seq)
        assert tr == (seq[:-2] if len(seq) >= 3 else seq[:1])
    for i in range(len(s.test)):
        u = s.test.users[i]
        assert s.test.history(i).tolist() + s.test.targets(i).tolist() == seqs[u]
    for i in range(len(s.valid)):
        u = s.valid.users[i]
        assert s.valid.history(i).tolist() + s.valid.targets(i).tolist() == seqs[u][:-1]
    assert len(s.test) == sum(len(q) >= 2 for q in seqs)
    assert len(s.valid) == sum(len(q) >= 3 for q in seqs)


def test_temporal_exact_contents():
    seqs = [[1, 2, 3, 4, 3], [5, 6], [7, 8], [9]]
    times = [[10, 20, 30, 40, 50], [15, 25], [35, 45], [60]]
    data = SequenceData.from_lists(seqs, n_items=10, timestamps=times)
    s = temporal_split(data, valid_start=25, test_start=40)
    assert _seqs(s.train) == [[1, 2], [5], [], []]
    assert _seqs(s.train_full) == [[1, 2, 3], [5, 6], [7], []]
    assert _cases(s.valid) == [(0, [1, 2], [3]), (1, [5], [6])]
    # test: 4 and a repeated 3 (kept unless drop_seen_targets), item 7's user
    # has 8 at 45; user 3 has no history (cold start) and is skipped
    assert _cases(s.test) == [(0, [1, 2, 3], [4, 3]), (2, [7], [8])]
    assert s.test.meta["n_targets_in_history"] == 1
    assert s.test.meta["protocol"] == "temporal"
    assert "temporal" in s.protocol

    dropped = temporal_split(data, valid_start=25, test_start=40, drop_seen_targets=True)
    assert _cases(dropped.test) == [(0, [1, 2, 3], [4]), (2, [7], [8])]


def test_temporal_targets_are_unique_in_first_seen_order():
    data = SequenceData.from_lists([[1, 5, 4, 5, 2, 4]], n_items=5,
                                   timestamps=[[1, 2, 3, 4, 5, 6]])
    s = temporal_split(data, valid_start=2, test_start=2)
    assert _cases(s.test) == [(0, [1], [5, 4, 2])]
    assert len(s.valid) == 0  # empty validation window


def test_temporal_has_no_future_leakage(synth):
    s = temporal_split(synth)
    vs, ts = s.valid.meta["valid_start"], s.test.meta["test_start"]
    assert vs < ts
    assert s.train.timestamps.max() < vs and s.train_full.timestamps.max() < ts
    assert len(s.valid) > 20 and len(s.test) > 20
    # default cut-offs leave about 10% of events for each period
    assert np.mean(synth.timestamps >= ts) == pytest.approx(0.1, abs=0.01)
    in_valid = (synth.timestamps >= vs) & (synth.timestamps < ts)
    assert np.mean(in_valid) == pytest.approx(0.1, abs=0.01)
    for es, cut_lo, cut_hi in ((s.valid, vs, ts), (s.test, ts, np.inf)):
        for i in range(len(es)):
            u = es.users[i]
            seq, t = synth.sequence(u), synth.timestamps[synth.indptr[u]:synth.indptr[u + 1]]
            np.testing.assert_array_equal(es.history(i), seq[t < cut_lo])
            window = set(seq[(t >= cut_lo) & (t < cut_hi)].tolist())
            assert set(es.targets(i).tolist()) == window


def test_temporal_sampling_uses_same_users(synth):
    s = temporal_split(synth, n_eval_users=40, seed=3)
    again = temporal_split(synth, n_eval_users=40, seed=3)
    np.testing.assert_array_equal(s.test.users, again.test.users)
    full = temporal_split(synth)
    chosen = set(s.valid.users.tolist()) | set(s.test.users.tolist())
    assert len(chosen) == 40
    assert set(s.test.users.tolist()) == chosen & set(full.test.users.tolist())
    assert set(s.valid.users.tolist()) == chosen & set(full.valid.users.tolist())


def test_temporal_errors():
    no_time = SequenceData.from_lists([[1, 2, 3]], n_items=3)
    with pytest.raises(ValueError, match="timestamps"):
        temporal_split(no_time)
    timed = SequenceData.from_lists([[1, 2, 3]], n_items=3, timestamps=[[1, 2, 3]])
    with pytest.raises(ValueError, match="after test_start"):
        temporal_split(timed, valid_start=3, test_start=2)
