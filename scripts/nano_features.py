"""How much of what the decoder sees of an object is its colour, its shape, and its place.

    python scripts/nano_features.py MODEL DATA [--scenes 1500] [--empty]

MODEL is a model with the `spatial3x3` projector (the nano model, or any stage of the nano recipe);
DATA a folder written by `omnivision data shapes` at the model's image size. For every object of the
shapes scenes it takes the image token of the object's grid cell, at two points: the vision tower's
features of the cell (its 3x3 patches, concatenated) and the projector's output, and prints for
colour, for shape and for the grid cell itself (which of the 9 tokens it is):

- the between-class share of the variance (how far the class means lie apart, relative to all the
  variation of the token): the decoder learns to read an attribute slowly when this is small;
- the held-out accuracy of a linear probe (softmax regression on standardised features, 80/20
  split): whether the attribute is there at all.

The cell matters as much as the attributes: the decoder's only other clue to which token is "the
object at the top left" is the token's place in the sequence, and in a conversation of several
turns its distance from the question changes. A cell probe near chance (11 %) at the projector
output means questions about one object of several get another object's answer.

With `--empty` it looks instead at the empty cells of the scenes that hold one object: how much of
that object's colour their tokens carry (share and probe, as above), for the cells beside the object
(a shared side) and for those farther away. Equal figures mean the tokens carry the scene's colour
wherever they are and do not blend in their neighbours, so an answer that reads a neighbour's
colour (`scripts/nano_answers.py`) has looked at the wrong token.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from omnivision.data.shape_scenes import POSITIONS
from omnivision.loader import load
from omnivision.model.projector import spatial3x3
from omnivision.train.image_loader import ImageLoader


def shapes_scenes(data: Path, n_scenes: int) -> list[dict]:
    """The first `n_scenes` shapes scenes of DATA's scenes.jsonl."""
    scenes = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    return [s for s in scenes if s["kind"] == "shapes"][:n_scenes]


@torch.no_grad()
def cell_tokens(parts: dict[str, Callable[[torch.Tensor], torch.Tensor]], loader: ImageLoader,
                scenes: list[dict]) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """Per object of `scenes`, the token of its grid cell from each of `parts` (pixels [B, 3, H, W]
    -> [B, 9, D]): {name: [N_objects, D]}, and the objects' colours, shapes and places."""
    tokens: dict[str, list[torch.Tensor]] = {name: [] for name in parts}
    colours, shapes, places = [], [], []
    for start in range(0, len(scenes), 64):
        chunk = scenes[start:start + 64]
        pixels = torch.stack([loader(s["image"]) for s in chunk])  # [B, 3, H, W]
        outputs = {name: part(pixels) for name, part in parts.items()}  # each [B, 9, D]
        for b, scene in enumerate(chunk):
            for o in scene["objects"]:
                cell = POSITIONS.index(o["position"])
                for name, out in outputs.items():
                    tokens[name].append(out[b, cell])
                colours.append(o["color"])
                shapes.append(o["shape"])
                places.append(o["position"])
    return {name: torch.stack(t) for name, t in tokens.items()}, colours, shapes, places


def model_parts(model_dir: str, data: Path) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], ImageLoader]:
    """The two points the tokens are read at (pixels [B, 3, H, W] -> [B, 9, D]), and the image loader."""
    vlm = load(model_dir, dtype="float32")
    model = vlm.model
    if model.projector.compression != "spatial3x3":
        raise SystemExit("error: needs a model with the spatial3x3 projector (one token per grid cell)")
    parts = {"tower (cell, 3x3 patches)": lambda px: spatial3x3(model.vision(px)),  # [B, 9, 9*D_v]
             "projector output": lambda px: model.projector(model.vision(px))}  # [B, 9, D]
    return parts, ImageLoader(vlm.config, data, cache=False)


def object_tokens(model_dir: str, data: Path, n_scenes: int):
    """Per object: tower features of its cell [9*D_v] and projector output [D], by name; colour, shape, cell."""
    return cell_tokens(*model_parts(model_dir, data), shapes_scenes(data, n_scenes))


def print_empty_cells(model_dir: str, data: Path, n_scenes: int) -> None:
    """The lone object's colour in the empty cells' tokens of one-object scenes, beside it and farther."""
    parts, loader = model_parts(model_dir, data)
    scenes = [s for s in shapes_scenes(data, n_scenes) if len(s["objects"]) == 1]
    tokens: dict[tuple[str, bool], list[torch.Tensor]] = {(name, b): [] for name in parts for b in (True, False)}
    colours: dict[bool, list[str]] = {True: [], False: []}
    for start in range(0, len(scenes), 64):
        chunk = scenes[start:start + 64]
        pixels = torch.stack([loader(s["image"]) for s in chunk])  # [B, 3, H, W]
        with torch.no_grad():
            outputs = {name: part(pixels) for name, part in parts.items()}  # each [B, 9, D]
        for b, scene in enumerate(chunk):
            held = POSITIONS.index(scene["objects"][0]["position"])
            for cell in set(range(9)) - {held}:
                beside = abs(cell // 3 - held // 3) + abs(cell % 3 - held % 3) == 1
                for name, out in outputs.items():
                    tokens[name, beside].append(out[b, cell])
                colours[beside].append(scene["objects"][0]["color"])
    print(f"{len(scenes)} one-object scenes; the object's colour in the empty cells' tokens: "
          "between-class share of variance / linear-probe accuracy")
    for name in parts:
        print(f"{name:27}" + "".join(
            f"   {'beside' if b else 'farther'} ({len(colours[b])}) {between_share(torch.stack(tokens[name, b]), colours[b]):6.1%}"
            f" / {probe_accuracy(torch.stack(tokens[name, b]), colours[b]):6.1%}" for b in (True, False)))


def between_share(x: torch.Tensor, labels: list[str]) -> float:
    """Share of the total variance of x [N, D] explained by the class means."""
    x = x.double() - x.double().mean(0)
    between = sum(x[[i for i, v in enumerate(labels) if v == k]].mean(0).pow(2).sum() * labels.count(k)
                  for k in set(labels))
    return float(between / x.pow(2).sum())


def probe_accuracy(x: torch.Tensor, labels: list[str], steps: int = 300) -> float:
    """Held-out accuracy of softmax regression on standardised features (last 20 % held out)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    split = int(0.8 * len(y))
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], len(classes))
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[:split]), y[:split]).backward()
        opt.step()
    with torch.no_grad():
        return float((probe(x[split:]).argmax(1) == y[split:]).float().mean())


def print_shares(tokens: dict[str, torch.Tensor], colours: list[str], shapes: list[str], places: list[str]) -> None:
    print(f"{len(colours)} objects; between-class share of variance / linear-probe accuracy")
    for name, x in tokens.items():
        print(f"{name:27} colour {between_share(x, colours):6.1%} / {probe_accuracy(x, colours):6.1%}"
              f"   shape {between_share(x, shapes):6.1%} / {probe_accuracy(x, shapes):6.1%}"
              f"   cell {between_share(x, places):6.1%} / {probe_accuracy(x, places):6.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("data", type=Path)
    p.add_argument("--scenes", type=int, default=1500)
    p.add_argument("--empty", action="store_true", help="the empty cells of one-object scenes instead")
    args = p.parse_args()
    if args.empty:
        print_empty_cells(args.model, args.data, args.scenes)
    else:
        print_shares(*object_tokens(args.model, args.data, args.scenes))


if __name__ == "__main__":
    main()
