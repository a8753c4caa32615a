"""What the runner, model and CLI tests run on: a tiny random checkpoint saved natively (byte-level
tokenizer), small POPE / ScienceQA-IMG / ChartQA / MMMU / MM-Vet folders in the real file layouts,
tasks with shorter answers, and a scripted stand-in model.

Answer texts of a random model are noise, but they are the same noise every time, which is what the
equality tests need."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omnivision.eval.tasks import Generation, Sample, get_task
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.weights.random_init import write_random_checkpoint
from tests.eval.tasks.files import IMAGE, b64, image_cell, pa, write_parquet, write_tsv

COLOURS = ("red", "green", "blue", "white")
POPE_TYPES = {"id": pa.string(), "question_id": pa.string(), "question": pa.string(),
              "answer": pa.string(), "image": IMAGE, "category": pa.string()}
SQA_TYPES = {"image": IMAGE, "question": pa.string(), "choices": pa.list_(pa.string()),
             "answer": pa.int8(), "hint": pa.string()}
CHARTQA_TYPES = {"type": pa.string(), "question": pa.string(), "answer": pa.string(), "image": IMAGE}


def write_checkpoint(root: Path) -> Path:
    """A tiny random-weight native checkpoint at root/model."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = root / "byte-tokenizer.json"
    byte_level_tokenizer().backend.save(str(tokenizer))
    path, _ = write_random_checkpoint("tiny", root / "model", tokenizer_file=tokenizer, seed=0)
    return Path(path)


def _colours(n: int) -> list[str]:
    return [COLOURS[i % len(COLOURS)] for i in range(n)]


def write_benchmarks(root: Path, n: int = 6) -> Path:
    """n samples each of pope, scienceqa_img and chartqa as lmms-eval's parquet shards."""
    write_parquet(root / "POPE/data/test-00000-of-00001.parquet", {
        "id": [str(i) for i in range(n)], "question_id": [f"q{i}" for i in range(n)],
        "question": [f"Is there a {c} dog?" for c in _colours(n)],
        "answer": ["yes" if i % 2 == 0 else "no" for i in range(n)],
        "image": [image_cell(c) for c in _colours(n)],
        "category": [("adversarial", "popular", "random")[i % 3] for i in range(n)],
    }, POPE_TYPES)
    write_parquet(root / "ScienceQA/ScienceQA-IMG/test-00000-of-00001.parquet", {
        "image": [image_cell(c) for c in reversed(_colours(n))],
        "question": [f"Which colour is shown ({i})?" for i in range(n)],
        "choices": [["red", "green", "blue"]] * n, "answer": [i % 3 for i in range(n)],
        "hint": ["A plain picture." if i % 2 else "" for i in range(n)],
    }, SQA_TYPES)
    write_parquet(root / "ChartQA/data/test-00000-of-00001.parquet", {
        "type": ["human_test" if i % 2 == 0 else "augmented_test" for i in range(n)],
        "question": [f"What is bar {i}?" for i in range(n)],
        "answer": [str(10 * i) for i in range(n)],
        "image": [image_cell(c) for c in _colours(n)],
    }, CHARTQA_TYPES)
    return root


def write_mmvet(root: Path) -> Path:
    """Two MM-Vet questions as VLMEvalKit's MMVet.tsv."""
    root.mkdir(parents=True, exist_ok=True)
    write_tsv(root / "MMVet.tsv", ["index", "image", "question", "answer", "category"], [
        ["v1", b64("red"), "What colour is it?", "red", "rec"],
        ["v2", b64("blue"), "What is x?", "-1<AND>-5", "ocr,math"],
    ])
    return root


def write_mmmu(root: Path) -> Path:
    """Two MMMU validation questions as VLMEvalKit's MMMU_DEV_VAL.tsv; the first has two images."""
    root.mkdir(parents=True, exist_ok=True)
    two = f"['{b64('red')}', '{b64('green')}']"
    write_tsv(root / "MMMU_DEV_VAL.tsv",
              ["index", "id", "image", "question", "A", "B", "answer", "split"], [
                  ["0", "validation_Art_1", two, "Compare <image 1> and <image 2>.", "same",
                   "different", "B", "validation"],
                  ["1", "validation_Math_2", b64("white"), "What is in <image 1>?", "", "", "white",
                   "validation"],
              ])
    return root


def short(name: str, max_new_tokens: int = 6, **settings) -> object:
    """The registered task with shorter answers (and any other generation settings given), so the
    random model's answers stay cheap."""
    task = get_task(name)
    gen = dataclasses.replace(task.generation, max_new_tokens=max_new_tokens, **settings)
    return dataclasses.replace(task, generation=gen)


def sample(sample_id: str, images: list, prompt: str, **gen) -> Sample:
    return Sample("test", sample_id, images, prompt, Generation(**{"max_new_tokens": 8, **gen}), {})


class ScriptedModel:
    """Answers "<task>/<id>" (or what `answers` maps the id to) and records what it was asked."""

    def __init__(self, answers: dict[str, str] | None = None, images: int | None = None) -> None:
        self.answers, self.images, self.asked = answers or {}, images, []

    def predict(self, samples):
        self.asked += [s.id for s in samples]
        return [self.answers.get(s.id, f"{s.task}/{s.id}") for s in samples]

    def images_used(self, s) -> int:
        return len(s.images) if self.images is None else min(self.images, len(s.images))

    def describe(self) -> dict:
        return {"backend": "scripted"}
