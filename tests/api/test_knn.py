import math

import pytest

from core.knn import knn_vote


def test_hand_computed_vote():
    # a: e^(0.9/0.1) + e^(0.5/0.1) = e^9 + e^5; b: e^8.
    vote = knn_vote([0.9, 0.8, 0.5], ["a", "b", "a"], temperature=0.1)
    a, b = math.exp(9) + math.exp(5), math.exp(8)
    assert vote.label == "a"
    assert vote.confidence == pytest.approx(a / (a + b))
    assert vote.scores == pytest.approx({"a": a / (a + b), "b": b / (a + b)})
    assert list(vote.scores) == ["a", "b"]  # highest first


def test_many_weak_neighbours_can_outvote_one_close_one_at_high_temperature():
    sims, labels = [0.9, 0.7, 0.7, 0.7], ["near", "far", "far", "far"]
    assert knn_vote(sims, labels, temperature=1.0).label == "far"
    assert knn_vote(sims, labels, temperature=0.01).label == "near"


def test_scores_sum_to_one_and_stay_finite_at_tiny_temperature():
    vote = knn_vote([1.0, -1.0, 0.99], ["x", "y", "z"], temperature=1e-4)
    assert sum(vote.scores.values()) == pytest.approx(1.0)
    assert all(math.isfinite(v) for v in vote.scores.values())
    assert vote.label == "x"


def test_ties_break_alphabetically():
    assert knn_vote([0.5, 0.5], ["b", "a"], 0.07).label == "a"


@pytest.mark.parametrize(
    "sims,labels,t", [([], [], 0.1), ([0.1], ["a", "b"], 0.1), ([0.1], ["a"], 0.0)]
)
def test_bad_input(sims, labels, t):
    with pytest.raises(ValueError):
        knn_vote(sims, labels, t)
