"""The one ranking rule: exclusions, and equal scores go to the lower item id, everywhere."""

import numpy as np
import torch

from attnrec.ranking import admissible, exclusion_mask, rank_row, ranks_of_targets, top_k, top_k_of


def test_ties_go_to_the_lower_id_in_top_k_candidate_lists_and_ranks():
    scores = torch.tensor([[float("-inf"), 1.0, 3.0, 3.0, 2.0, 3.0, float("-inf")]])
    idx, vals = top_k(scores, 5)
    assert idx[0].tolist() == [2, 3, 5, 4, 1] and vals[0].tolist() == [3.0, 3.0, 3.0, 2.0, 1.0]
    # a shuffled candidate list with a missing entry (id 0) comes out in the same order
    cand = np.array([[5, 0, 1, 3, 4, 2]])
    cand_scores = scores[0, cand[0]].numpy()[None]
    ids, sc = top_k_of(cand, cand_scores)
    assert ids[0].tolist() == [2, 3, 5, 4, 1, 0] and np.isneginf(sc[0, -1])
    # the rank evaluation gives an item is its place in that list
    ranks = ranks_of_targets(scores, [np.array([2, 3, 5, 4, 1, 6])])[0]
    assert ranks.tolist() == [1, 2, 3, 4, 5, float("inf")]


def test_exclusions_history_explicit_and_allowed():
    allowed = torch.tensor([False, True, True, True, True, False])
    mask = exclusion_mask([np.array([1]), np.array([], dtype=np.int64)], 6, True,
                          [np.array([2, 99]), None], allowed)
    assert mask.tolist() == [[True, True, True, False, False, True],
                             [True, False, False, False, False, True]]
    assert not exclusion_mask([np.array([1])], 3, exclude_history=False)[0, 1]
    ids = np.array([0, 1, 2, 3, 4, 5])
    assert admissible(ids, np.array([2]), allowed.numpy()).tolist() == [False, True, False, True, True, False]
    scores = torch.tensor([float("-inf"), 5.0, 4.0, 4.0, 1.0, 9.0])
    got, sc = rank_row(scores, 10, seen=np.array([1]), exclude=np.array([4]), allowed=allowed)
    assert got.tolist() == [2, 3] and sc.tolist() == [4.0, 4.0]  # 5 not allowed, padding dropped
