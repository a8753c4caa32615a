"""Pair making: edit distance, the filters and their counts."""

from __future__ import annotations

import pytest

from omnivision.train.make_pairs import PairSource, edit_distance, make_pairs, normalised_edit_distance
from omnivision.train.teachers import OracleTeacher


@pytest.mark.parametrize("a,b,d", [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3),
                                   ("flaw", "lawn", 2), ("same", "same", 0)])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


def test_normalised_by_the_longer_string():
    assert normalised_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalised_edit_distance("", "") == 0.0


def test_filters_and_counts():
    caption = "A large red circle at the top left."
    sources = [
        PairSource("1.png", "Describe the image.", reference=caption),  # right: unchanged
        PairSource("2.png", "Describe the image.", reference=caption),  # one word wrong: kept
        PairSource("3.png", "Describe the image.", reference=caption),  # all wrong: too far
        PairSource("4.png", "Describe the image.", reference=None),     # no ground truth: failed
    ]
    given = {"1.png": caption, "2.png": "A large blue circle at the top left.",
             "3.png": "Two small squares.", "4.png": "Something."}
    result = make_pairs(sources, lambda chunk: [given[s.image] for s in chunk], OracleTeacher(),
                        max_edit=0.3, batch=2)
    assert [(p.image, p.chosen, p.rejected) for p in result.pairs] == [
        ("2.png", caption, "A large blue circle at the top left.")]
    assert result.dropped == {"unchanged": 1, "too_far": 1, "teacher_failed": 1}


def test_bad_threshold():
    with pytest.raises(ValueError):
        make_pairs([], lambda chunk: [], OracleTeacher(), max_edit=0)
