"""MM-Vet (open answers graded by a GPT judge): lmms-eval's task `mmvet` (config default, split
test, 218 questions).

Prompt (`doc_to_text` with the default pre-prompt): "First please perform reasoning, and think step
by step to provide best answer to the following question: " (with its trailing space), two
newlines, then the question. Generation: 1024 new tokens, temperature 0.2 with sampling off (so
greedy), top_p 1.0.

From VLMEvalKit's MMVet.tsv the `question_id` is the TSV `index` and `capability` is its `category`
column (the same comma-separated capability names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnivision.eval.tasks.base import Generation, Row, Sample
from omnivision.eval.tasks.benchmark import BenchmarkTask, lazy_images, text
from omnivision.eval.tasks.source import DataSource

PRE_PROMPT = ("First please perform reasoning, and think step by step to provide best answer "
              "to the following question: \n\n")


@dataclass(frozen=True)
class MMVetTask(BenchmarkTask):
    def doc_from_tsv(self, row: Row) -> dict[str, Any]:
        values = row.values
        return {"question_id": values["index"], "question": values["question"],
                "answer": values["answer"], "capability": values["category"],
                "image": values["image"][0]}

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        question = text(doc, "question", row)
        # lmms-eval gives a row without an image no visual
        visuals = lazy_images(row, [] if doc["image"] is None else [(doc["image"], "image")])
        return Sample(self.name, str(doc["question_id"]), visuals, PRE_PROMPT + question,
                      self.generation,
                      {"question_id": doc["question_id"], "question": question,
                       "answer": text(doc, "answer", row), "capability": text(doc, "capability", row)})


TASKS = [MMVetTask("mmvet", Generation(max_new_tokens=1024, temperature=0.2, top_p=1.0),
                   DataSource("MMVet", None, "test", "MMVet.tsv"),
                   ("question_id", "image", "question", "answer", "capability"),
                   ("question", "answer", "category"))]
