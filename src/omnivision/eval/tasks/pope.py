"""POPE (object hallucination, yes/no questions): lmms-eval's tasks `pope` (config default, split
test: all three negative-sampling strategies together) and `pope_adv`, `pope_pop`, `pope_random`
(config Full, one split per strategy).

Prompt (`pope_doc_to_text` with the default post-prompt): the stripped question, then a newline
and "Answer the question using a single word or phrase.". Generation: 128 new tokens, greedy.

From VLMEvalKit's POPE.tsv (answers "Yes"/"No", one row per question shared by several
strategies, `category` listing them comma-separated) a per-strategy task keeps the rows whose
category names its strategy; `question_id` is then the TSV `index`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omnivision.eval.tasks.base import Generation, Row, Sample
from omnivision.eval.tasks.benchmark import BenchmarkTask, lazy_images, text
from omnivision.eval.tasks.source import DataSource

POST_PROMPT = "\nAnswer the question using a single word or phrase."
STRATEGIES = {"pope_adv": "adversarial", "pope_pop": "popular", "pope_random": "random"}


@dataclass(frozen=True)
class PopeTask(BenchmarkTask):
    strategy: str | None = None  # None: all three strategies

    def doc_from_tsv(self, row: Row) -> dict[str, Any] | None:
        values = row.values
        listed = [s.strip() for s in values["category"].split(",")]
        if self.strategy is not None and self.strategy not in listed:
            return None
        return {"question_id": values["index"], "question": values["question"],
                "answer": values["answer"], "category": self.strategy or values["category"],
                "image": values["image"][0]}

    def sample(self, doc: dict[str, Any], row: Row) -> Sample:
        question = text(doc, "question", row)
        # the Full config's rows are one strategy each, so a missing category is that strategy
        category = doc.get("category") or self.strategy
        sample_id = doc.get("id", doc["question_id"])
        return Sample(self.name, str(sample_id), lazy_images(row, [(doc["image"], "image")]),
                      question.strip() + POST_PROMPT, self.generation,
                      {"question_id": doc["question_id"], "question": question,
                       "answer": text(doc, "answer", row), "category": category})


def _task(name: str, config: str | None, split: str, strategy: str | None, top_p: float) -> PopeTask:
    hf_columns = ("question_id", "question", "answer", "image") + (() if strategy else ("category",))
    # the YAMLs state top_p (1.0 for `pope`, 0 per strategy); irrelevant under greedy decoding
    return PopeTask(name, Generation(max_new_tokens=128, top_p=top_p),
                    DataSource("POPE", config, split, "POPE.tsv"), hf_columns,
                    ("question", "answer", "category"), strategy)


TASKS = [_task("pope", None, "test", None, 1.0)] + [
    _task(name, "Full", strategy, strategy, 0.0) for name, strategy in STRATEGIES.items()]
