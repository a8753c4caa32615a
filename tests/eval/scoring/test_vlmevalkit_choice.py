"""VLMEvalKit's rule-based letter reading (`can_infer`), case by case; each expectation is worked
out by hand from the rules in the module docstring (docs/benchmark-scoring.md section 2, and
VLMEvalKit's `can_infer_option` for the "answer is X" pattern)."""

from __future__ import annotations

import pytest

from omnivision.eval.scoring.vlmevalkit_choice import infer_choice

CHOICES = {"A": "cat", "B": "dog", "C": "bird"}  # option texts: 10 characters together


@pytest.mark.parametrize("answer, letter", [
    ("C", "C"), ("[C]", "C"), ("C: bird", "C"), ("#C!", "C"),
    ("I pick C", "C"),  # 3 tokens, C is the last: within the last four
    ("C is right because the picture clearly shows a small bird", "Z"),  # C is token 0 of 11
    ("The answer is b because it shows a small brown bird on a branch", "B"),  # "answer is X"
    ("The answer is D, given the picture of the animal", "Z"),  # D is no option here
    # upstream's "answer is X" pattern is case-insensitive with no word boundary after X, so a
    # word starting with a, b, c or d is read as that letter
    ("I think the answer is apple, as the animal in the picture is red", "A"),
    ("the ANSWER   IS **C** because the animal in the picture has wings", "C"),
    ("The correct answer is bird since the picture clearly shows a small bird", "B"),
    ("A or B", "Z"),  # two letters; the text rule then finds no option text
    ("Z", "Z"),
    ("Cannot determine the answer B", "Z"),  # a refusal sentence
    ("Failed to obtain answer via API B", "Z"),  # not read by letter; too long for text
    ("a bird", "C"),  # text rule: 6 characters, "bird" inside
    ("it is definitely a bird, I am sure", "Z"),  # 34 > 2 * 10 characters: no text rule
])
def test_infer_choice(answer, letter):
    assert infer_choice(answer, dict(CHOICES)) == letter


def test_api_failure_only_blocks_the_letter_rule():
    choices = {"A": "cat", "B": "dog", "C": "x" * 20}  # 26 characters: answers up to 52 are short
    assert infer_choice("The reply came via the API: B", dict(choices)) == "B"
    # same letter among the last tokens, but the marker skips the letter rule; no text matches
    assert infer_choice("Failed to obtain answer via API: B", dict(choices)) == "Z"
    # the text rule still runs
    assert infer_choice("Failed to obtain answer via API: dog", dict(choices)) == "B"
