"""ChartQA: lmms-eval's task `chartqa` (config default, split test: 2,500 questions, the
"human_test" and "augmented_test" types together).

Prompt (`chartqa_doc_to_text` with the default post-prompt): the question, then a newline and
"Answer the question with a single word.". Generation: 16 new tokens, greedy.

lmms-eval's dataset has no id column, so a sample's id is its 0-based position in the split. From
VLMEvalKit's ChartQA_TEST.tsv the id is the TSV `index`, and `type` comes from its `split` column:
"human_test" or "augmented_test" when the value names either, the value itself otherwise, and
"unknown" when the file has no split (the scorer then gives no per-split figure for the row rather
than counting it as augmented).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnivision.eval.scoring.chartqa import UNKNOWN_TYPE
from omnivision.eval.tasks.base import Generation, Row, Sample
from omnivision.eval.tasks.benchmark import BenchmarkTask, lazy_images, text
from omnivision.eval.tasks.source import DataSource

POST_PROMPT = "\nAnswer the question with a single word."


def split_type(split: str | None) -> str:
    """lmms-eval's `type` for a VLMEvalKit `split` value such as "test_human"; "unknown" for none."""
    if not split:
        return UNKNOWN_TYPE
    for kind in ("human", "augmented"):
        if kind in split.lower():
            return f"{kind}_test"
    return split


@dataclass(frozen=True)
class ChartQATask(BenchmarkTask):
    def doc_from_tsv(self, row: Row) -> dict[str, Any]:
        values = row.values
        return {"id": values["index"], "question": values["question"], "answer": values["answer"],
                "type": split_type(values.get("split")), "image": values["image"][0]}

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        question = text(doc, "question", row)
        return Sample(self.name, str(doc.get("id", row.ordinal)), lazy_images(row, [(doc["image"], "image")]),
                      question + POST_PROMPT, self.generation,
                      {"question": question, "answer": text(doc, "answer", row),
                       "type": text(doc, "type", row)})


TASKS = [ChartQATask("chartqa", Generation(max_new_tokens=16),
                     DataSource("ChartQA", None, "test", "ChartQA_TEST.tsv"),
                     ("type", "question", "answer", "image"), ("question", "answer"))]
