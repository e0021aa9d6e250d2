"""Concurrent single-history forwards are coalesced without mixing up results."""

import threading

import numpy as np
import pytest
import torch

from attnrec.serving.engine import MicroBatcher


def test_concurrent_calls_get_their_own_rows_and_are_batched():
    sizes = []
    gate = threading.Event()

    def fn(histories):
        gate.wait(0.05)  # let other callers queue up behind the first batch
        sizes.append(len(histories))
        return [torch.tensor([float(h.sum())]) for h in histories]

    mb = MicroBatcher(fn, max_batch=8)
    results = {}

    def call(i):
        results[i] = float(mb(np.array([i, i]))[0])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2.0 * i for i in range(20)}
    assert sum(sizes) == 20 and max(sizes) > 1 and max(sizes) <= 8


def test_errors_reach_every_caller_of_the_batch_and_the_batcher_recovers():
    calls = {"n": 0}

    def fn(histories):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return [torch.zeros(1) for _ in histories]

    mb = MicroBatcher(fn)
    with pytest.raises(RuntimeError, match="boom"):
        mb(np.array([1]))
    assert float(mb(np.array([1]))[0]) == 0.0
