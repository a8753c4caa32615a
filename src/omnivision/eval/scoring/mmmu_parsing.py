"""MMMU's response parsers, as lmms-eval applies them: the option letter of a multiple-choice
answer, and the candidate answers (strings and numbers) of an open one, with the official matching
rules.

Multiple choice (`parse_choice`): strip , . ! ? ; : ' from both ends (one mark after another;
newlines stay), pad with a space on each side, then take the first rule that finds candidates:
(a) letters written "(X)"; (b) letters followed by a space; (c) letters followed by "."; (d) only
when the answer has more than 5 words, options whose lowercased text occurs in it. Several
candidates: the one found last ("(X)", " X " or the option text, by its last position; ties and
not-found go to the earliest candidate). No candidate: a letter drawn with the caller's `rng`, or
no letter (None) when the caller gives no `rng`.

Open (`parse_open`): lowercase, split at newlines, and in each piece keep the shortest text after
the last occurrence of an indicator ("could be ", "so ", "is ", "thus ", "therefore ", "final ",
"answer ", "result ", and "=" in the last piece), unless it is a lone punctuation mark; with no
indicator anywhere, the whole answer. Numbers found in those pieces are added; every candidate is
normalised (`normalise`), and `open_matches` compares them with the gold answer.
"""

from __future__ import annotations

import random
import re

_EDGE_MARKS = (",", ".", "!", "?", ";", ":", "'")
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}
# Split at newlines, or at ". " before a capital; the text is lowercased first, so in practice the
# second never fires (kept because it is the rule).
_PIECES = re.compile(r"\.\s(?=[A-Z])|\n")
_GROUPED_NUMBER = re.compile(r"""-? \b \d{1,3} (?: ,\d{3} )+ \b""", re.VERBOSE)  # 1,000
_SCIENTIFIC_NUMBER = re.compile(r"""-? \d+ (?: \.\d+ )? [eE][+-]?\d+""", re.VERBOSE)  # 1.5e3
# a plain number not followed by an exponent, a comma or another digit (so "1,000" also gives "0")
_PLAIN_NUMBER = re.compile(r"""-? (?: \d+\.\d+ | \.\d+ | \d+\b ) (?![eE][+-]?\d+) (?![,\d])""",
                           re.VERBOSE)


def _last_found(candidates: list[str], position) -> str:
    # max() keeps the first of equal positions, as the reference's argmax does
    return max(candidates, key=position)


def parse_choice(response: str, options: list[str],
                 rng: random.Random | None) -> tuple[str | None, bool]:
    """(letter, found no candidate?) for a multiple-choice answer; options are lettered A, B, ...
    With no candidate the letter is drawn with `rng`, or None without one."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    text = response
    for mark in _EDGE_MARKS:
        text = text.strip(mark)
    text = f" {text} "
    found = [x for x in letters if f"({x})" in text]
    if found:
        return _last_found(found, lambda x: text.rfind(f"({x})")), False
    found = [x for x in letters if f"{x} " in text]
    if found:
        return _last_found(found, lambda x: text.rfind(f" {x} ")), False
    found = [x for x in letters if f"{x}." in text]
    if found:  # none of these has " X " in the text, so all positions tie: the first wins
        return found[0], False
    if len(text.split()) > 5:
        lowered = text.lower()
        by_text = {x: option.lower() for x, option in zip(letters, options)}
        found = [x for x in letters if by_text[x] in lowered]
        if found:
            return _last_found(found, lambda x: lowered.rfind(by_text[x])), False
    return (rng.choice(letters) if rng is not None else None), True


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalise(text: str) -> list[str | float]:
    """A number (commas removed) becomes a float rounded to 2 decimals; other text is lowercased,
    and a single character becomes " x" and "x " so that it cannot match inside any word."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _numbers(text: str) -> list[str]:
    return (_GROUPED_NUMBER.findall(text) + _SCIENTIFIC_NUMBER.findall(text)
            + _PLAIN_NUMBER.findall(text))


def _key_pieces(response: str) -> list[str]:
    text = response.strip().strip(".").lower()
    pieces = _PIECES.split(text)
    keys = []
    for i, piece in enumerate(pieces):
        indicators = _INDICATORS + ("=",) if i == len(pieces) - 1 else _INDICATORS
        shortest = None
        for indicator in indicators:
            if indicator in piece:
                tail = piece.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [text]


def parse_open(response: str) -> list[str | float]:
    """The normalised candidate answers of an open question's response, without duplicates."""
    keys = _key_pieces(response)
    candidates = keys + [number for key in keys for number in _numbers(key)]
    unique = {value for candidate in candidates for value in normalise(candidate)}
    return sorted(unique, key=lambda v: (isinstance(v, str), str(v)))


def open_matches(gold: str | list[str], candidates: list[str | float]) -> bool:
    """A text candidate matches when a text gold answer occurs in it; a number candidate when it
    equals a number gold answer (both rounded to 2 decimals)."""
    answers = gold if isinstance(gold, list) else [gold]
    golds = [g for answer in answers for g in normalise(answer)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in golds):
                return True
        elif candidate in golds:
            return True
    return False
