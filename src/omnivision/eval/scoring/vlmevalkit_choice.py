"""VLMEvalKit's rule-based reading of an option letter out of a free-form answer (its `can_infer`),
used for ScienceQA and MMMU under the "vlmevalkit" convention. With no judge model, an answer it
cannot read is scored as the letter "Z", which is never right.

Letter rule, tried first:
- an answer containing the API-failure marker is not read by letter; one containing one of a few
  refusal sentences reads as "Z";
- the characters `. ( ) [ ] , : ; ! * # { }` become spaces and the text is split on whitespace;
- if exactly one option letter is a token (upper case only) and its first occurrence is among the
  last four tokens, that letter; if no letter is a token but "Z" is, "Z";
- otherwise "answer is X" (optionally "correct answer is X") gives X when X is an option: any
  case, X in A-D, optional `**` around it, one or more spaces between the words, and no word
  boundary after X, so "the answer is apple" reads as A. That is VLMEvalKit's own pattern (checked
  against `vlmeval/utils/matching_util.py` as of commit d21c5e96, whose regex is case-insensitive
  and ends at the letter), reproduced on purpose rather than tightened.
Text rule, when the letter rule gives nothing: unless the answer is more than twice as long as all
option texts together, the one option whose lowercased text occurs in the lowercased answer.
"""

from __future__ import annotations

import re

API_FAILURE = "Failed to obtain answer via API"
# Fixed refusal sentences VLMEvalKit maps to "Z" (data, not prose: they must match exactly).
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
NO_ANSWER = "Z"

_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
# no \b after the letter, as upstream: "answer is apple" matches "a"
_ANSWER_IS = re.compile(r"answer\s+is\s+\**([abcd])\**", re.IGNORECASE)


def _by_letter(answer: str, choices: dict[str, str]) -> str | None:
    if API_FAILURE in answer:
        return None
    if any(refusal in answer for refusal in REFUSALS):
        return NO_ANSWER
    tokens = _SEPARATORS.sub(" ", answer).split()
    present = [letter for letter in choices if letter in tokens]
    if len(present) == 1:
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and NO_ANSWER in tokens:
        return NO_ANSWER
    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def _by_text(answer: str, choices: dict[str, str]) -> str | None:
    lowered = answer.lower()
    if len(lowered) > 2 * sum(len(text) for text in choices.values()):
        return None
    hits = [letter for letter, text in choices.items() if text.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


def infer_choice(answer: str, choices: dict[str, str]) -> str:
    """The letter VLMEvalKit reads out of `answer`, or "Z" when it reads none.

    `choices` maps option letters ("A", "B", ...) to option texts; empty options are left out."""
    return _by_letter(answer, choices) or _by_text(answer, choices) or NO_ANSWER
