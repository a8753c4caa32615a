"""Our generated data as evaluation tasks: `shapes_qa` (the short-answer questions of `qa.jsonl`)
and `shapes_pope` (the yes/no object probes of `pope.jsonl`), read from a folder written by
`omnivision data shapes`.

Where: DATA_DIR itself when it holds `meta.json` (the generator writes it last, so its presence
marks a finished dataset), else `DATA_DIR/shapes/`. So both `--data DIR_FROM_DATA_SHAPES` and a
benchmark folder with the dataset generated into its `shapes/` subfolder work. The hub is not a
source for these tasks.

Prompt: the question exactly as written (no suffix: the nano model is trained on these questions
bare). Generation: greedy, 16 new tokens (the answers are a word or two), lmms-eval's default stop
string. Fields, for the scorers: `question_id`, `image` (path in the folder), `question`, `answer`,
and `qtype` and `extra` (shapes_qa, scored by `scoring.shapes_qa`) or `category` (the negative
sampling strategy) and `object` (shapes_pope, scored by `scoring.pope`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omnivision.data.formats import read_qa
from omnivision.data.images import check_images
from omnivision.json_files import DataError
from omnivision.data.records import QAItem
from omnivision.eval.tasks import hub
from omnivision.eval.tasks.base import DataDir, Generation, Sample, TaskDataError, check_limit
from omnivision.eval.tasks.images import LazyImages
from omnivision.processing.image import ImageError, load_image

SUBFOLDER = "shapes"
MARKER = "meta.json"


def dataset_folder(data_dir: DataDir) -> Path:
    """The generated dataset's folder for DATA_DIR (see the module docstring)."""
    if hub.is_hub(data_dir):
        raise TaskDataError(str(data_dir), "the shapes tasks read a local folder made by "
                                           "`omnivision data shapes`, not the hub")
    root = Path(data_dir)
    if not root.is_dir():
        raise TaskDataError(str(root), "no such data folder")
    for folder in (root, root / SUBFOLDER):
        if (folder / MARKER).is_file():
            return folder
    raise TaskDataError(str(root), f"no generated dataset: neither {root / MARKER} nor "
                                   f"{root / SUBFOLDER / MARKER} exists (make one with "
                                   f"`omnivision data shapes --out {root / SUBFOLDER} ...`)")


def _fields(item: QAItem, pope: bool) -> dict:
    fields = {"question_id": item.id, "image": item.image, "question": item.question,
              "answer": item.answer}
    if pope:
        return {**fields, "category": item.extra["strategy"], "object": item.extra["object"]}
    return {**fields, "qtype": item.qtype, "extra": dict(item.extra)}


@dataclass(frozen=True)
class ShapesTask:
    """One file of a generated dataset; `pope` selects the probe fields."""

    name: str
    file: str
    pope: bool
    generation: Generation = Generation(max_new_tokens=16)

    @property
    def data_files(self) -> str:
        return (f"<data>/{self.file} when <data>/{MARKER} exists, else "
                f"<data>/{SUBFOLDER}/{self.file} (made by `omnivision data shapes`)")

    def samples(self, data_dir: DataDir, limit: int | None = None) -> Iterator[Sample]:
        """The file's questions in order, at most `limit`; the file is read and every image it
        names is checked at once, so bad data raises here rather than on the first `next`."""
        check_limit(limit)
        folder = dataset_folder(data_dir)
        path = folder / self.file
        if not path.is_file():
            raise TaskDataError(str(folder), f"missing {self.file}")
        try:
            items = read_qa(path)[:limit]
            self._check_kind(items)
            check_images(items, folder)
        except DataError as e:
            raise TaskDataError(f"{e.file}:{e.line}", e.problem) from None
        return (self._sample(item, folder) for item in items)

    def _check_kind(self, items: list[QAItem]) -> None:
        for item in items:
            if (item.qtype == "pope") != self.pope:
                file, line = item.source
                expected = "'pope'" if self.pope else "a type other than 'pope'"
                raise DataError(file, line, f"{self.name} expects qtype {expected}, got '{item.qtype}'")

    def _sample(self, item: QAItem, folder: Path) -> Sample:
        loaders = [] if item.image is None else [lambda: _load(item, folder)]
        return Sample(self.name, item.id, LazyImages(loaders), item.question, self.generation,
                      _fields(item, self.pope))


def _load(item: QAItem, folder: Path):
    try:
        return load_image(folder / item.image)
    except (ImageError, OSError) as e:  # the file changed since it was checked
        file, line = item.source
        raise TaskDataError(f"{file}:{line}", f"image {item.image!r}: {e}") from None


TASKS = (ShapesTask("shapes_qa", "qa.jsonl", pope=False),
         ShapesTask("shapes_pope", "pope.jsonl", pope=True))
