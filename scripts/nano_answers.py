"""Where a nano model's answers go wrong: held-out accuracy per question kind and object count.

    python scripts/nano_answers.py MODEL DATA [--scenes N]

MODEL is a nano model (or any stage of the nano recipe), DATA a folder written by
`omnivision data shapes` at the model's image size (the recipe's `eval-data`). For every question
of `qa.jsonl` about a shapes scene the model answers greedily, one question per conversation as in
the recipe's evaluation; the table gives the accuracy per kind (colour, shape, count, position)
for scenes of 1, 2, 3 and 4 objects. For colour and shape it also counts the wrong answers that are
the attribute of another object of the same scene: when nearly all are, the model reads the right
attribute from the wrong token, which is a failure to tell the image tokens apart
(`scripts/nano_features.py` then shows whether the tokens still carry their grid cell), not a
failure to see colour or shape. For position ("Where is the red circle?") it counts the wrong
answers that are another object's place, split by what that object shares with the one asked
about (its colour, its shape, neither): the lookup of one object by two attributes among several.
For the wrong colours that are another object's it gives where on the grid that object lies from
the asked one (beside it, diagonal, farther), against where a random other object of the scene
would lie: more errors beside than chance means the answer reads a blend of the asked cell and its
neighbours.
Run on the recipe's training `data` instead of `eval-data`, the same table says whether the model
fits the training questions at all (`--scenes 300`: the first 300 scenes only).

Then the yes/no probes of `pope.jsonl` whose object is absent: how many get a false "yes", split by
whether the probe's colour and its shape are each somewhere in the scene. False "yes" answers where
only the shape is there mean the model checks the shape and not the colour; where both are there
on different objects, that it does not bind them to one object.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from omnivision.data.formats import read_qa
from omnivision.data.questions import where
from omnivision.data.shape_scenes import POSITIONS
from omnivision.loader import load
from omnivision.vlm import OmniVision

KINDS = ("color", "shape", "count", "position")


def model_and_scenes(doc: str, scenes_default: int = 0, scenes_help: str = "the first N scenes only (0: all)",
                     extra: list[tuple[str, dict]] = ()) -> tuple[argparse.Namespace, OmniVision, list[dict]]:
    """The nano diagnostics' command line, `MODEL DATA [--scenes N] [--threads T]` and the `extra`
    options (name, `add_argument` keywords): the parsed arguments, the model in float32 and every
    scene of DATA's `scenes.jsonl` in order."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data", type=Path)
    p.add_argument("--scenes", type=int, default=scenes_default, help=scenes_help)
    p.add_argument("--threads", type=int, default=0)
    for name, kwargs in extra:
        p.add_argument(name, **kwargs)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    scenes = [json.loads(line) for line in (args.data / "scenes.jsonl").read_text().splitlines()]
    return args, load(args.model, dtype="float32"), scenes


def main() -> None:
    args, vlm, every = model_and_scenes(__doc__)
    scenes = {s["image"]: s for s in every[:args.scenes or None]}
    items = [q for q in read_qa(args.data / "qa.jsonl")
             if q.image in scenes and scenes[q.image]["kind"] == "shapes" and q.qtype in KINDS]
    answers = _answers(vlm, args.data, items)
    right: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    elsewhere = {kind: [0, 0] for kind in ("color", "shape", "position")}  # [another object's, all wrong]
    shares: dict[str, int] = defaultdict(int)  # wrong places by what their object shares with the asked one
    near = torch.zeros(2, len(NEAR))  # [said, chance][where the object read lies from the asked one]
    for q, a in zip(items, answers):
        objects = scenes[q.image]["objects"]
        said = a.strip().rstrip(".").lower()
        ok = said == q.answer.lower()
        right[q.qtype, len(objects)][0] += ok
        right[q.qtype, len(objects)][1] += 1
        if q.qtype in elsewhere and not ok:
            elsewhere[q.qtype][0] += said in {o[q.qtype] for o in objects}
            elsewhere[q.qtype][1] += 1
        if q.qtype == "position" and not ok:
            shares[_shared(q.question, objects, said)] += 1
        if q.qtype == "color" and not ok:
            near += _neighbours(q.question, objects, said)
    print(f"{'kind':9}" + "".join(f"{f'{n} object' + ('s' if n > 1 else ''):>12}" for n in range(1, 5)))
    for kind in KINDS:
        cells = [right[kind, n] for n in range(1, 5)]
        print(f"{kind:9}" + "".join(f"{(r / t if t else 0):12.1%}" for r, t in cells))
    for kind, (other, wrong) in elsewhere.items():
        print(f"wrong {kind} answers naming another object's {kind}: {other} of {wrong}")
    print("wrong places, by what the object there shares with the one asked about: "
          + ", ".join(f"{k} {v}" for k, v in sorted(shares.items())))
    print("wrong colours that are another object's, by where that object lies from the asked one on the grid "
          "(in brackets: a random other object): " + ", ".join(
              f"{name} {said:.1f} ({chance:.1f})" for name, (said, chance) in zip(NEAR, near.T.tolist())))
    _false_yes(vlm, args.data, scenes)


def _shared(question: str, objects: list[dict], place: str) -> str:
    """What the object at `place` shares with the one a position question asks about ("Where is
    the red circle?"): "its colour", "its shape", "neither", or "no object there"."""
    colour, shape = question.rstrip("?").split()[-2:]
    there = [o for o in objects if o["position"] == place]
    if not there:
        return "no object there"
    return "its colour" if there[0]["color"] == colour else "its shape" if there[0]["shape"] == shape else "neither"


def asked_cell(kind: str, question: str, objects: list[dict]) -> int:
    """The grid cell (the image token) of the object a question asks about."""
    if kind == "color":  # "What color is the object at the top left?" / "... in the center?"
        return next(i for i, place in enumerate(POSITIONS) if question.endswith(f" {where(place)}?"))
    colour, shape = question.rstrip("?").split()[-2:]  # "Where is the red circle?"
    return POSITIONS.index(next(o["position"] for o in objects if o["color"] == colour and o["shape"] == shape))


NEAR = ("beside", "diagonal", "farther")  # where one grid cell lies from another: sharing a side, a corner, neither


def _near(a: int, b: int) -> int:
    """The index in `NEAR` of grid cell b seen from cell a (cells in reading order)."""
    rows, cols = abs(a // 3 - b // 3), abs(a % 3 - b % 3)
    return 0 if rows + cols == 1 else 1 if rows == cols == 1 else 2


def _neighbours(question: str, objects: list[dict], said: str) -> torch.Tensor:
    """For a wrong colour answer: [2, 3], row 0 where the other objects of colour `said` lie from the
    asked one (`NEAR`; one in all, split among them), row 1 where a random other object would (one
    in all, when some other object has the said colour)."""
    asked = asked_cell("color", question, objects)
    others = [POSITIONS.index(o["position"]) for o in objects if o["position"] != POSITIONS[asked]]
    hits = [POSITIONS.index(o["position"]) for o in objects if o["color"] == said and o["position"] != POSITIONS[asked]]
    out = torch.zeros(2, len(NEAR))
    for cell in hits:
        out[0, _near(asked, cell)] += 1 / len(hits)
    for cell in others if hits else ():
        out[1, _near(asked, cell)] += 1 / len(others)
    return out


def _answers(vlm, data: Path, items) -> list[str]:
    answers = []
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        answers += vlm.answer_batch([data / q.image for q in chunk], [q.question for q in chunk],
                                    max_new_tokens=16)
    return answers


def _false_yes(vlm, data: Path, scenes: dict[str, dict]) -> None:
    """False "yes" answers to the probes of absent objects, by what of the object the scene has."""
    absent = [q for q in read_qa(data / "pope.jsonl") if q.answer == "no" and q.image in scenes]
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # [false "yes", probes]
    for q, a in zip(absent, _answers(vlm, data, absent)):
        colour, shape = q.extra["object"].split(" ", 1)
        objects = scenes[q.image]["objects"]
        has = (any(o["color"] == colour for o in objects), any(o["shape"] == shape for o in objects))
        group = {(False, False): "neither", (False, True): "its shape only", (True, False): "its colour only",
                 (True, True): "both, on different objects"}[has]
        counts[group][0] += a.strip().lower().startswith("yes")
        counts[group][1] += 1
    print("probes of absent objects: false \"yes\" by what of the object the scene has")
    for group in ("neither", "its colour only", "its shape only", "both, on different objects"):
        wrong, total = counts[group]
        print(f"  {group:28}{wrong:5} of {total:5}" + (f" ({wrong / total:.1%})" if total else ""))


if __name__ == "__main__":
    main()
