"""Does a nano model find an object's image token by what the token holds, or by its distance?

    python scripts/nano_context.py MODEL DATA [--scenes N] [--threads N]

MODEL is a nano model (or any stage of the nano recipe), DATA a folder written by
`omnivision data shapes` at the model's image size (the recipe's `eval-data`). For every object of
a shapes scene with two objects or more, the model is asked its colour ("What color is the object
at the top left?") alone, as the recipe's evaluation asks, and then after one, two and three
earlier turns that say nothing of colour or place ("How many objects are there?", "How many
squares are there?", "How many crosses are there?", answered right). The image comes first in
every case; the earlier turns only move the question further from it.

A model that finds the object by the grid cell its image token carries answers alike at every
distance. One that learned where the image tokens are from their distance to the question (the
decoder's rotary positions) loses the object as the question moves away: its answers fall towards
those of a model that sees the scene's colours but not which object has which.
"""

from __future__ import annotations

from nano_answers import model_and_scenes
from omnivision.data.questions import COLOR_Q, where
from omnivision.vlm import Turn

FILLERS = (("How many objects are there?", None), ("How many squares are there?", "square"),
           ("How many crosses are there?", "cross"))
"""Earlier turns: the question and the shape it counts (None: every object)."""


def main() -> None:
    args, vlm, scenes = model_and_scenes(__doc__, 100, "how many shapes scenes to use (default 100)")
    scenes = [s for s in scenes if s["kind"] == "shapes" and len(s["objects"]) >= 2][:args.scenes]
    right, n = [0] * (len(FILLERS) + 1), 0
    for s in scenes:
        image = args.data / s["image"]
        answers = [str(sum(shape in (None, o["shape"]) for o in s["objects"])) for _, shape in FILLERS]
        for o in s["objects"]:
            question = COLOR_Q.format(where=where(o["position"]))
            for k in range(len(FILLERS) + 1):
                history = [Turn(q, a, image if i == 0 else None)
                           for i, ((q, _), a) in enumerate(zip(FILLERS[:k], answers))]
                said = vlm.chat(None if history else image, question, history=history, max_new_tokens=8)
                right[k] += said.strip().rstrip(".").lower() == o["color"]
            n += 1
    print(f"{n} colour questions on {len(scenes)} scenes of 2-4 objects ({args.model})")
    print("| earlier turns | " + " | ".join(str(k) for k in range(len(right))) + " |")
    print("| --- |" + " --- |" * len(right))
    print("| colour right | " + " | ".join(f"{100 * k / n:.1f} %" for k in right) + " |")


if __name__ == "__main__":
    main()
