"""`scienceqa_img`: lmms-lab/ScienceQA (ScienceQA-IMG, test) shards and VLMEvalKit's
ScienceQA_TEST.tsv; the context / question / lettered options prompt and its settings."""

from __future__ import annotations

import re

import pytest

from omnivision.eval.tasks import TaskDataError, get_task
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, write_parquet, write_tsv

SQA_TYPES = {"image": IMAGE, "question": pa.string(), "choices": pa.list_(pa.string()),
             "answer": pa.int8(), "hint": pa.string(), "task": pa.string(), "grade": pa.string(),
             "subject": pa.string(), "topic": pa.string(), "category": pa.string(),
             "skill": pa.string(), "lecture": pa.string(), "solution": pa.string()}

# worked out by hand from the rule: "Context: <hint>\n" if there is a hint, the question, "\n",
# the "X. choice" lines joined by "\n", then "\n" and the default post-prompt
WITH_HINT = ("Context: The map shows Europe.\n"
             "Which country is highlighted?\n"
             "A. France\nB. Spain\nC. Italy\n"
             "Answer with the option's letter from the given choices directly.")
WITHOUT_HINT = ("Which is a mammal?\n"
                "A. whale\nB. shark\n"
                "Answer with the option's letter from the given choices directly.")


def test_scienceqa_img_prompts_and_fields_from_parquet(tmp_path):
    n = 2
    write_parquet(tmp_path / "ScienceQA/ScienceQA-IMG/test-00000-of-00001.parquet", {
        "image": [image_cell("green"), image_cell("red")],
        "question": ["Which country is highlighted?", "Which is a mammal?"],
        "choices": [["France", "Spain", "Italy"], ["whale", "shark"]],
        "answer": [2, 0],
        "hint": ["The map shows Europe.", ""],
        **{c: ["x"] * n for c in ("task", "grade", "subject", "topic", "category", "skill",
                                  "lecture", "solution")},
    }, SQA_TYPES)
    first, second = get_task("scienceqa_img").samples(tmp_path)
    assert (first.prompt, second.prompt) == (WITH_HINT, WITHOUT_HINT)
    assert (first.id, second.id) == ("0", "1")  # no id column: the position in the split
    assert first.fields == {"question": "Which country is highlighted?",
                            "choices": ["France", "Spain", "Italy"], "answer": 2,
                            "hint": "The map shows Europe."}
    assert type(first.fields["answer"]) is int
    assert colour_of(first.images[0]) == "green"
    gen = first.generation
    assert (gen.max_new_tokens, gen.temperature, gen.do_sample, gen.until) == (16, 0.0, False, ("\n\n",))


def test_scienceqa_from_the_vlmevalkit_tsv(tmp_path):
    header = ["index", "question", "hint", "A", "B", "C", "D", "E", "answer", "category", "image"]
    write_tsv(tmp_path / "ScienceQA_TEST.tsv", header, [
        ["3", "Which country is highlighted?", "The map shows Europe.", "France", "Spain", "Italy",
         "", "", "C", "geography", b64("blue")],
        ["4", "Which is a mammal?", "", "whale", "shark", "", "", "", "A", "biology", "3"],
    ])
    first, second = get_task("scienceqa_img").samples(tmp_path)
    assert (first.prompt, second.prompt) == (WITH_HINT, WITHOUT_HINT)
    assert (first.id, second.id) == ("3", "4")
    assert first.fields["choices"] == ["France", "Spain", "Italy"] and first.fields["answer"] == 2
    assert second.fields == {"question": "Which is a mammal?", "choices": ["whale", "shark"],
                             "answer": 0, "hint": ""}
    assert colour_of(second.images[0]) == "blue"  # reused from index 3


def test_tsv_answer_that_is_not_an_option_is_reported(tmp_path):
    path = write_tsv(tmp_path / "ScienceQA_TEST.tsv", ["index", "question", "A", "B", "answer", "image"],
                     [["1", "Q?", "x", "y", "C", b64("red")]])
    message = f"{path}:2: column 'answer': 'C' is not one of the options A, B"
    with pytest.raises(TaskDataError, match=re.escape(message)):
        list(get_task("scienceqa_img").samples(tmp_path))
