"""ScienceQA, image subset: lmms-eval's task `scienceqa_img` (config ScienceQA-IMG, split test).

Prompt (`sqa_doc_to_text`, format "default"): "Context: <hint>" and a newline when the hint is not
empty, the question, a newline, one "A. <choice>" line per choice (joined by newlines), then the
default post-prompt, a newline and "Answer with the option's letter from the given choices
directly.". Generation: 16 new tokens, greedy.

lmms-eval's dataset has no id column, so a sample's id is its 0-based position in the split (the
`doc_id`). From VLMEvalKit's ScienceQA_TEST.tsv the choices are the non-empty option columns A, B, ...
in order, the answer letter becomes its index among them, and the id is the TSV `index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnivision.eval.tasks.base import Generation, Row, Sample, TaskDataError
from omnivision.eval.tasks.benchmark import BenchmarkTask, lazy_images, option_columns, text
from omnivision.eval.tasks.source import DataSource

POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def build_prompt(question: str, choices: list[str], hint: str) -> str:
    context = f"Context: {hint}\n" if hint else ""
    options = "\n".join(f"{chr(ord('A') + i)}. {choice}" for i, choice in enumerate(choices))
    return f"{context}{question}\n{options}{POST_PROMPT}"


@dataclass(frozen=True)
class ScienceQATask(BenchmarkTask):
    def doc_from_tsv(self, row: Row) -> dict[str, Any]:
        values = row.values
        letters = option_columns(values)
        if values["answer"] not in letters:
            raise TaskDataError(row.where, f"column 'answer': {values['answer']!r} is not one of "
                                           f"the options {', '.join(letters) or '(none)'}")
        return {"id": values["index"], "question": values["question"], "hint": values.get("hint", ""),
                "choices": [values[letter] for letter in letters],
                "answer": letters.index(values["answer"]), "image": values["image"][0]}

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        question, choices, answer = text(doc, "question", row), doc["choices"], doc["answer"]
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise TaskDataError(row.where, "column 'choices': expected a list of strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise TaskDataError(row.where, f"column 'answer': {answer!r} is not a choice index "
                                           f"(0 to {len(choices) - 1})")
        hint = doc["hint"] or ""  # lmms-eval's rows hold "" for no hint; None is read the same
        # lmms-eval gives a row without an image no visual (only the FULL config has such rows)
        visuals = lazy_images(row, [] if doc["image"] is None else [(doc["image"], "image")])
        return Sample(self.name, str(doc.get("id", row.ordinal)), visuals,
                      build_prompt(question, choices, hint), self.generation,
                      {"question": question, "choices": choices, "answer": answer, "hint": hint})


TASKS = [ScienceQATask("scienceqa_img", Generation(max_new_tokens=16),
                       DataSource("ScienceQA", "ScienceQA-IMG", "test", "ScienceQA_TEST.tsv"),
                       ("image", "question", "choices", "answer", "hint"), ("question", "answer"))]
