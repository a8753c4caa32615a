"""Whether an answer to one of our generated questions is right: the one rule for the procedural
data, used by everything that judges answers to it.

Users: the oracle teacher of minimal-edit DPO (`train.teachers.OracleTeacher` keeps an answer this
rule accepts unchanged and replaces any other by the truth, so stage 3 never "corrects" an answer
the scorers count right), the `shapes_qa` task's scorer (`eval.scoring.shapes_qa`), and the nano
model's shapes report (`eval.shapes_accuracy`: accuracy per question type and the yes/no tables).

The rule (`is_correct`):

- Both texts are normalised (`normalise`): lower case; surrounding whitespace and the marks
  ` .!?,;:` at either end removed; runs of whitespace made one space; one leading article ("a",
  "an", "the" followed by whitespace) dropped. "A circle." and "circle" are both "circle".
- A yes/no question, one whose truth normalises to "yes" or "no", is answered by the first word of
  the answer (`yes_no`): "Yes", "yes." and "Yes, there is" read "yes", "No!" reads "no"; an answer
  whose first word is neither ("I think so", "maybe", "There is") reads nothing and is wrong. The
  answer is right when its reading is the truth.
- Any other question is answered right when the two normalised texts are equal: "Red." answers
  "red", but "dark red", "3 objects" and "three" do not answer "red" and "3".

What `reading` returns is what was compared with the normalised truth (the `parsed` of a scored
record). Whether a question is a yes/no question follows from its truth alone: in the generated
data (`data.questions`, `data.pope`) "yes" and "no" are the answers of the object probes (qtype
"pope") and of no other question. So the verdict needs no qtype, and the teacher, which sees only
the prompt, the answer and the truth, reaches the verdict the scorers reach. A qtype, when known,
is checked against it: a "pope" item whose truth is not "yes" or "no" is an error.

Relation to POPE's rule (`eval.scoring.pope`): the `shapes_pope` task is scored by the standard
tool's rule (lmms-eval: the prediction, lowercased and stripped, must be exactly "yes" or "no"), so
that its figures sit beside published POPE figures; that rule is the benchmark's and stays as it is.
This rule judges content, not form: every answer lmms-eval counts right is right here too, and
"Yes." or "Yes, there is" are also right here (lmms-eval reads them as nothing). So on the same
answers `shapes_pope`'s accuracy is at most this rule's yes/no accuracy, and the gap is the share of
right answers not given as the bare word. VLMEvalKit's reading ("yes" occurs as a word and "no" does
not) lies between the two: it accepts "Yes, there is", but also "I think yes", which this rule does
not.
"""

from __future__ import annotations

import re

YES_NO = ("yes", "no")
YES_NO_QTYPE = "pope"
"""The qtype of the generated yes/no questions (the object probes)."""

_ARTICLE = re.compile(r"^(a|an|the)\s+")
_END_MARKS = " .!?,;:"
_WORD = re.compile(r"[a-z]+")


def normalise(text: str) -> str:
    """Lower case, no surrounding whitespace or end marks, single spaces, no leading article."""
    text = " ".join(text.lower().strip(_END_MARKS + "\t\n\r\f\v").split())
    return _ARTICLE.sub("", text)


def yes_no(text: str) -> str | None:
    """"yes" or "no" when that is the answer's first word (letters only, any case), else None."""
    words = _WORD.findall(text.lower())
    return words[0] if words and words[0] in YES_NO else None


def is_yes_no_question(truth: str, qtype: str | None = None) -> bool:
    """Whether the question whose answer is `truth` is a yes/no question; a `qtype` of "pope" with
    another truth raises ValueError."""
    yes_no_truth = normalise(truth) in YES_NO
    if qtype == YES_NO_QTYPE and not yes_no_truth:
        raise ValueError(f"a {YES_NO_QTYPE!r} question needs the truth 'yes' or 'no', got {truth!r}")
    return yes_no_truth


def reading(prediction: str, truth: str, qtype: str | None = None) -> str | None:
    """What of `prediction` is compared with the normalised truth: its yes/no reading for a yes/no
    question (None when it reads as neither), else the normalised text."""
    return yes_no(prediction) if is_yes_no_question(truth, qtype) else normalise(prediction)


def is_correct(prediction: str, truth: str, qtype: str | None = None) -> bool:
    """Whether `prediction` answers the generated question whose canonical answer is `truth`."""
    return reading(prediction, truth, qtype) == normalise(truth)
