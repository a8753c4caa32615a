"""Structural mutation of a JSON document: one node replaced by an extreme or wrongly typed value,
deleted, duplicated, renamed or buried under deep nesting; then serialized as Python's `json` does
(NaN and Infinity included, as a hand-edited file or a careless client may hold them).

Byte mutation of JSON text mostly yields text that is not JSON at all; this reaches the checks
behind the parser (config fields, tokenizer entries, request fields).
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

DEEP = "__fuzz_deep_nesting__"
"""Placeholder for a value nested deeper than any parser recurses; spliced in as text, because
`json.dumps` itself would recurse that deep."""

VALUES = (0, -1, 1, 2**31 - 1, 2**63 - 1, -2**63, 2**64, 10**30, 1e308, -1e308, float("inf"),
          float("nan"), 0.5, -0.0, "", "x", "\u0000", "\u202e", "\udcff", "A" * 70_000, None, True,
          False, [], {}, [0], {"": None}, DEEP)
"""Replacement values: extremes for numbers, empty and huge strings, every JSON type."""


def _paths(value: Any, here: tuple = ()) -> list[tuple]:
    """Every node's path (keys and indices from the root), the root included."""
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, here + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, here + (i,))
    return found


def _parent(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def _mutate_node(doc: Any, path: tuple, rng: random.Random) -> tuple[Any, str]:
    """`doc` (a copy) with the node at `path` changed; the root is only ever replaced."""
    op = rng.choice(["replace", "replace", "replace", "delete", "duplicate", "rename", "wrap"])
    if not path:
        new = copy.deepcopy(rng.choice(VALUES))
        return new, f"root = {_short(new)}"
    parent, key = _parent(doc, path), path[-1]
    where = "/".join(map(str, path))
    if op == "delete":
        del parent[key]
        return doc, f"delete {where}"
    if op == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
        return doc, f"duplicate {where}"
    if op == "rename" and isinstance(parent, dict):
        new_key = rng.choice(["", key + "_", key.upper(), "model", "type"])
        parent[new_key] = parent.pop(key)
        return doc, f"rename {where} to {new_key!r}"
    if op == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}
        return doc, f"wrap {where}"
    parent[key] = copy.deepcopy(rng.choice(VALUES))  # a copy: VALUES must never change
    return doc, f"{where} = {_short(parent[key])}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def mutate_json(doc: Any, rng: random.Random) -> tuple[bytes, str]:
    """A mutated copy of `doc` as JSON bytes (one to three changes), and what was done."""
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        doc, what = _mutate_node(doc, rng.choice(_paths(doc)), rng)
        done.append(what)
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
    depth = rng.choice([2_000, 100_000])
    text = text.replace(json.dumps(DEEP), "[" * depth + "]" * depth)
    return text.encode("utf-8", "surrogatepass"), "; ".join(done)
