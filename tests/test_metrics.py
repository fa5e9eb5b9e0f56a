"""Retrieval metrics against hand-worked matrices: ties (pessimistic), several ground truths, both directions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.metrics import dual_softmax, ranks, retrieval_metrics, t2v_v2t_metrics


def test_perfect_diagonal():
    m = retrieval_metrics(np.eye(3))
    assert m == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0, "num_queries": 3, "num_targets": 3}


def test_hand_worked_ranks_with_ties_are_pessimistic():
    sim = np.array([
        [0.5, 0.5, 0.1],  # correct 0 tied with wrong 1 -> rank 2
        [0.2, 0.9, 0.9],  # correct 1 tied with wrong 2 -> rank 2
        [0.3, 0.3, 0.3],  # all tied -> rank 3
        [0.1, 0.2, 0.3],  # (4th query, 3 targets: gt given explicitly) correct 2 is top -> rank 1
    ])
    assert ranks(sim[:3]).tolist() == [2, 2, 3]
    m = retrieval_metrics(sim, gt=[0, 1, 2, 2])
    assert m["R1"] == 25.0 and m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MdR"] == 2.0 and m["MnR"] == 2.0  # ranks 2, 2, 3, 1
    assert (m["num_queries"], m["num_targets"]) == (4, 3)


def test_ranks_beyond_10_and_the_median_of_an_even_count():
    # query 0: correct target 0 has the lowest of 12 scores -> rank 12; query 1: correct 1 is 5th -> rank 5
    sim = np.array([np.r_[0, np.arange(11, 0, -1)], np.r_[9, 7, 8, 10, 11, np.zeros(7)]], dtype=float)
    m = retrieval_metrics(sim)
    assert ranks(sim).tolist() == [12, 5]
    assert (m["R1"], m["R5"], m["R10"], m["MdR"], m["MnR"]) == (0.0, 50.0, 50.0, 8.5, 8.5)


def test_several_ground_truths_take_the_best_ranked():
    sim = np.array([
        [0.1, 0.4, 0.8, 0.6],  # correct {1, 3}: best 0.6, only 0.8 is above -> rank 2
        [0.2, 0.9, 0.3, 0.95],  # correct {0}: three wrong targets above -> rank 4
        [0.7, 0.7, 0.7, 0.1],  # correct {0, 1}: tied with each other and with wrong 2 -> rank 2
    ])
    m = retrieval_metrics(sim, gt=[[1, 3], [0], [0, 1]])
    assert ranks(sim, gt=[[1, 3], [0], [0, 1]]).tolist() == [2, 4, 2]
    assert (m["R1"], m["R5"], m["MdR"], m["MnR"]) == (0.0, 100.0, 2.0, pytest.approx(8 / 3))


def test_both_directions_with_two_captions_per_video():
    sim = np.array([[0.9, 0.1], [0.2, 0.4], [0.3, 0.7], [0.6, 0.5]])  # 4 texts x 2 videos
    m = t2v_v2t_metrics(sim, [0, 0, 1, 1])
    # t2v ranks: 1, 2, 1, 2
    assert (m["t2v"]["R1"], m["t2v"]["MdR"], m["t2v"]["MnR"], m["t2v"]["num_queries"]) == (50.0, 1.5, 1.5, 4)
    # v2t: video 0's texts {0, 1} best 0.9 -> rank 1; video 1's texts {2, 3} best 0.7 -> rank 1
    assert (m["v2t"]["R1"], m["v2t"]["MnR"], m["v2t"]["num_queries"], m["v2t"]["num_targets"]) == (100.0, 1.0, 2, 4)
    with pytest.raises(ValueError, match="no text"):
        t2v_v2t_metrics(sim, [0, 0, 0, 0])


def test_torch_input_and_half_precision_ties():
    sim = torch.tensor([[0.5, 0.5], [0.25, 1.0]], dtype=torch.float16)
    assert ranks(sim).tolist() == [2, 1]
    assert retrieval_metrics(sim)["R1"] == 50.0


def test_chunking_does_not_change_results():
    sim = np.random.default_rng(0).integers(0, 4, (203, 203)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(ranks(sim, chunk_size=7), ranks(sim))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_ranks_match_a_brute_force_sort(nq, nt, data):
    sim = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=nt, max_size=nt),
                                      min_size=nq, max_size=nq)), dtype=float)
    gt = [data.draw(st.sets(st.integers(0, nt - 1), min_size=1)) for _ in range(nq)]
    expected = []
    for q in range(nq):
        # sort by score, ties put wrong targets first (pessimistic); rank = first correct position
        order = sorted(range(nt), key=lambda t: (-sim[q, t], t in gt[q]))
        expected.append(1 + next(i for i, t in enumerate(order) if t in gt[q]))
    assert ranks(sim, [sorted(g) for g in gt]).tolist() == expected


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        ranks(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="out of range"):
        ranks(np.eye(2), gt=[0, 2])
    with pytest.raises(ValueError, match="no correct target"):
        ranks(np.eye(2), gt=[[0], []])
    with pytest.raises(ValueError, match="queries <= targets"):
        ranks(np.ones((3, 2)))


def test_dual_softmax_hand_worked():
    out = dual_softmax(np.array([[1.0, 0.0], [0.0, 1.0]]), temperature=1.0)
    p = math.e / (math.e + 1)  # softmax over the queries of each column
    np.testing.assert_allclose(out, [[p, 0.0], [0.0, p]])
    # It uses the other queries: query 1 claims target 0 more strongly, so query 0 loses it. That is
    # why it is opt-in and labelled transductive.
    sim = np.array([[0.9, 0.0, 0.8], [0.95, 0.99, 0.0]])
    assert ranks(sim).tolist() == [1, 1] and ranks(dual_softmax(sim, 100.0)).tolist() == [2, 1]
