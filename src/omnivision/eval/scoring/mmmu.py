"""MMMU (validation or dev split): per-question scoring and accuracy per subject, per domain and
overall.

Fields: `id` ("validation_Art_Theory_12": split, subject, number), `question_type`
("multiple-choice" or "open"), `options` (a Python list literal string, or a list; multiple choice
only), `answer` (a letter, or the open answer's text; a list of either is accepted), `prediction`.
`parsed` is `{"letter": X, "random": bool}` for a letter read, `{"answers": [...]}` for the
normalised candidates of an open answer.

- lmms-eval: `mmmu_parsing` rules. A multiple-choice answer with no readable letter falls back as
  `fallback` says (docs/benchmark-scoring.md 3.2). "random" (the default, lmms-eval's and the official
  scorer's behaviour): a random letter, drawn from a generator seeded with the record's `id`, so a
  rerun gives the same number. "wrong": no letter, so the answer is wrong, as VLMEvalKit's
  exact-matching mode scores it. The aggregate counts both (`random_fallbacks`,
  `wrong_fallbacks`). Open answers follow the official MMMU rules (lmms-eval 0.3.5 to 0.7.2 scored
  every open question wrong by a bug; that is not reproduced).
- vlmevalkit: the letter is read with `vlmevalkit_choice.infer_choice`, and "Z" (wrong) when none
  is; an open question becomes a two-way choice, A = the gold text, B = "Other Answers", with A
  right (unless the gold is itself a capital letter). No random letters; `fallback` is unused.

`submission_answer` turns a record (with no gold answer needed) into what the MMMU evaluation
server takes for the test split: the letter `score` would read, fallback included, or "" where
the "wrong" fallback leaves none; for an open question the candidates the official open-answer
parse reads.

Aggregation follows lmms-eval's: subject from the id, each domain the instance-weighted mean of its
subjects, `overall` = correct / all; accuracies rounded to 5 decimals.
"""

from __future__ import annotations

import ast
import random
import string
from collections import defaultdict

from omnivision.eval import mmmu_ids
from omnivision.eval.scoring.mmmu_parsing import open_matches, parse_choice, parse_open
from omnivision.eval.scoring.protocol import (LMMS_EVAL, Scored, check_convention, field,
                                              text_field, wrong_field)
from omnivision.eval.scoring.vlmevalkit_choice import infer_choice

MULTIPLE_CHOICE, OPEN = "multiple-choice", "open"
OTHER_ANSWERS = "Other Answers"
RANDOM, WRONG = "random", "wrong"
FALLBACKS = (RANDOM, WRONG)

# The official MMMU grouping of the 30 subjects into 6 domains.
DOMAINS = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine",
                            "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science",
                             "Electronics", "Energy_and_Power", "Materials",
                             "Mechanical_Engineering"],
}


def check_fallback(fallback: str) -> str:
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown MMMU fallback {fallback!r} (choose from {', '.join(FALLBACKS)})")
    return fallback


def subject(record: dict) -> str:
    """The subject named in the id: what lies between the split prefix and the trailing number."""
    name = mmmu_ids.subject(text_field(record, "id"))
    if name is None:
        raise wrong_field(record, "id", "'<split>_<Subject>_<number>'")
    return name


def _question_type(record: dict) -> str:
    value = field(record, "question_type")
    if value not in (MULTIPLE_CHOICE, OPEN):
        raise wrong_field(record, "question_type", f"'{MULTIPLE_CHOICE}' or '{OPEN}'")
    return value


def _options(record: dict) -> list[str]:
    value = field(record, "options")
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise wrong_field(record, "options", "a Python list literal") from None
    if not isinstance(value, list) or not value or not all(isinstance(o, str) for o in value):
        raise wrong_field(record, "options", "a non-empty list of strings")
    return value


def _gold(record: dict) -> str | list[str]:
    value = field(record, "answer")
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(v, str) for v in value)):
        return value
    raise wrong_field(record, "answer", "a string or a list of strings")


def read_choice(record: dict, fallback: str = RANDOM) -> tuple[str | None, bool]:
    """(letter, fell back?) for a multiple-choice record's prediction, by lmms-eval's rules."""
    # a str seed is hashed with SHA-512: the same draw in any process
    rng = random.Random(text_field(record, "id")) if check_fallback(fallback) == RANDOM else None
    return parse_choice(text_field(record, "prediction"), _options(record), rng)


def submission_answer(record: dict, fallback: str = RANDOM) -> tuple[str | list[str | float], bool]:
    """What the MMMU evaluation server is sent for one record (see the module docstring), and
    whether a multiple-choice answer fell back for want of a readable letter."""
    if _question_type(record) == OPEN:
        return parse_open(text_field(record, "prediction")), False
    letter, fell_back = read_choice(record, fallback)
    return letter or "", fell_back


def _lmms_eval(record: dict, kind: str, gold, prediction: str, fallback: str) -> Scored:
    if kind == OPEN:
        candidates = parse_open(prediction)
        return Scored(float(open_matches(gold, candidates)), {"answers": candidates})
    letter, fell_back = read_choice(record, fallback)
    right = letter in gold if isinstance(gold, list) else letter == gold
    return Scored(float(right), {"letter": letter, "random": fell_back and fallback == RANDOM,
                                 "wrong": fell_back and fallback == WRONG})


def _vlmevalkit(record: dict, kind: str, gold, prediction: str) -> Scored:
    if isinstance(gold, list):
        raise wrong_field(record, "answer", "a single string under the vlmevalkit convention")
    if kind == OPEN:
        choices = {"A": gold, "B": OTHER_ANSWERS}
        is_letter = len(gold) == 1 and gold in string.ascii_uppercase
        gold = gold if is_letter else "A"
    else:
        choices = {chr(ord("A") + i): o for i, o in enumerate(_options(record)) if o}
    letter = infer_choice(prediction, choices)
    return Scored(float(letter == gold), {"letter": letter, "random": False, "wrong": False})


def score(record: dict, convention: str = LMMS_EVAL, fallback: str = RANDOM) -> Scored:
    check_fallback(fallback)
    subject(record)  # a bad id should fail here, not at aggregation
    kind, gold = _question_type(record), _gold(record)
    prediction = text_field(record, "prediction")
    if check_convention(convention) == LMMS_EVAL:
        return _lmms_eval(record, kind, gold, prediction, fallback)
    return _vlmevalkit(record, kind, gold, prediction)


def _summary(correct: int, num: int) -> dict:
    return {"acc": round(correct / num, 5) if num else 0.0, "num": num}


def aggregate(records: list[dict], convention: str = LMMS_EVAL) -> dict:
    """`overall` (overall), `domains` and `subjects` as {"acc", "num"}, and the counts of
    multiple-choice answers that fell back to a random letter or to wrong."""
    check_convention(convention)
    correct: dict[str, int] = defaultdict(int)
    num: dict[str, int] = defaultdict(int)
    for r in records:
        name = subject(r)
        num[name] += 1
        correct[name] += float(r["score"]) == 1.0
    domains = {}
    for domain, names in DOMAINS.items():
        present = [n for n in names if n in num]
        domains[domain] = _summary(sum(correct[n] for n in present), sum(num[n] for n in present))
    return {"overall": _summary(sum(correct.values()), len(records))["acc"], "n": len(records),
            "random_fallbacks": _count_parsed(records, "random"),
            "wrong_fallbacks": _count_parsed(records, "wrong"), "domains": domains,
            "subjects": {n: _summary(correct[n], num[n]) for n in sorted(num)}}



def _count_parsed(records: list[dict], flag: str) -> int:
    return sum(bool(isinstance(r.get("parsed"), dict) and r["parsed"].get(flag)) for r in records)
