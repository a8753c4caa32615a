"""Ground truth of procedural images: scene records, their rendering, `scenes.jsonl` in and out.

One line of `scenes.jsonl` per image, so that anything holding an image path can recover exactly
what is in it (the oracle teacher of the preference stage corrects answers from it):

    {"id": "000000", "image": "images/000000.png", "kind": "shapes",
     "objects": [{"shape": "circle", "color": "red", "size": "large", "position": "top left"}]}
    {"id": "000001", "image": "images/000001.png", "kind": "chart",
     "labels": ["A", "B", "C"], "values": [3, 9, 1]}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from PIL import Image

from omnivision.data.charts import BAR_LABELS, MAX_VALUE, ChartScene, render_chart
from omnivision.json_files import DataError, iter_json_records
from omnivision.data.shape_scenes import (COLORS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES, ShapeObject,
                                    ShapeScene, render_shapes)

Scene = Union[ShapeScene, ChartScene]


@dataclass(frozen=True)
class SceneRecord:
    """A scene with its id and image path (relative to the dataset directory)."""

    id: str
    image: str
    scene: Scene


def render_scene(scene: Scene, image_size: int = 96) -> Image.Image:
    """Draw a shapes scene or a chart."""
    if isinstance(scene, ChartScene):
        return render_chart(scene, image_size)
    return render_shapes(scene, image_size)


def scene_to_dict(record: SceneRecord) -> dict[str, Any]:
    """The `scenes.jsonl` form of a record."""
    out: dict[str, Any] = {"id": record.id, "image": record.image}
    scene = record.scene
    if isinstance(scene, ChartScene):
        out.update(kind="chart", labels=list(scene.labels), values=list(scene.values))
    else:
        out.update(kind="shapes", objects=[{"shape": o.shape, "color": o.color, "size": o.size,
                                            "position": o.position} for o in scene.objects])
    return out


def _check(ok: bool, path: Path, line: int, problem: str) -> None:
    if not ok:
        raise DataError(path, line, problem)


def _shape_scene(raw: dict[str, Any], path: Path, line: int) -> ShapeScene:
    objects = raw.get("objects")
    _check(isinstance(objects, list) and 1 <= len(objects) <= MAX_OBJECTS, path, line,
           f"'objects' must be a list of 1 to {MAX_OBJECTS} objects")
    vocab = {"shape": SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}
    parsed = []
    for n, obj in enumerate(objects):
        _check(isinstance(obj, dict), path, line, f"objects[{n}] must be an object")
        for key, allowed in vocab.items():
            _check(obj.get(key) in allowed, path, line,
                   f"objects[{n}].{key} must be one of {', '.join(allowed)}; got {obj.get(key)!r}")
        parsed.append(ShapeObject(obj["shape"], obj["color"], obj["size"], obj["position"]))
    cells = [POSITIONS.index(o.position) for o in parsed]
    _check(cells == sorted(set(cells)), path, line,
           "objects must be at distinct positions, in reading order")
    _check(len({o.name for o in parsed}) == len(parsed), path, line,
           "two objects share both colour and shape")
    return ShapeScene(tuple(parsed))


def _chart_scene(raw: dict[str, Any], path: Path, line: int) -> ChartScene:
    values, labels = raw.get("values"), raw.get("labels")
    _check(isinstance(values, list) and 3 <= len(values) <= len(BAR_LABELS), path, line,
           f"'values' must be a list of 3 to {len(BAR_LABELS)} integers")
    _check(all(type(v) is int and 1 <= v <= MAX_VALUE for v in values), path, line,
           f"'values' must be integers from 1 to {MAX_VALUE}")
    _check(len(set(values)) == len(values), path, line, "'values' must be distinct")
    _check(labels == list(BAR_LABELS[:len(values)]), path, line,
           f"'labels' must be {list(BAR_LABELS[:len(values)])}")
    return ChartScene(tuple(values))


def read_scenes(path: str | os.PathLike) -> list[SceneRecord]:
    """The records of a `scenes.jsonl` file, validated; raises `DataError`."""
    path = Path(path)
    out = []
    for line, raw in iter_json_records(path):
        _check(isinstance(raw, dict), path, line, "expected a JSON object")
        ident, image, kind = raw.get("id"), raw.get("image"), raw.get("kind")
        _check(isinstance(ident, str) and bool(ident), path, line, "'id' must be a non-empty string")
        _check(isinstance(image, str) and bool(image), path, line,
               "'image' must be a non-empty string")
        _check(kind in ("shapes", "chart"), path, line,
               f"'kind' must be 'shapes' or 'chart'; got {kind!r}")
        scene = _chart_scene(raw, path, line) if kind == "chart" else _shape_scene(raw, path, line)
        out.append(SceneRecord(ident, image, scene))
    return out
