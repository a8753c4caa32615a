"""MMMU tasks: lmms-lab/MMMU shards and VLMEvalKit's MMMU TSVs; the options and `<image k>`
placeholders in the prompt, which images go with it and in what order, and the submission file."""

from __future__ import annotations

import json
import re

import pytest

from omnivision.eval.tasks import TaskDataError, get_task
from omnivision.eval.tasks.mmmu import SubmissionError, write_submission
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, write_parquet, write_tsv

MMMU_TYPES = {"id": pa.string(), "question": pa.string(), "options": pa.string(),
              "explanation": pa.string(), **{f"image_{k}": IMAGE for k in range(1, 8)},
              "img_type": pa.string(), "answer": pa.string(), "topic_difficulty": pa.string(),
              "question_type": pa.string(), "subfield": pa.string()}

MC_QUESTION = "Compare <image 2> with <image 1>. Which is older?"
# by hand: question, "\n", the "X. option" lines joined by "\n", a blank line, the MC prompt
MC_PROMPT = ("Compare <image 2> with <image 1>. Which is older?\n"
             "A. <image 3>\nB. Both\nC. Neither\n\n"
             "Answer with the option's letter from the given choices directly.")
OPEN_QUESTION = "What is the value of x in <image 1>?"
# by hand: question, a blank line, the open-question prompt
OPEN_PROMPT = ("What is the value of x in <image 1>?\n\n"
               "Answer the question using a single word or phrase.")


def mmmu_columns(rows):
    """rows: (id, question, options, answer, question_type, colours of image_1..image_7)."""
    columns = {name: [] for name in MMMU_TYPES}
    for sample_id, question, options, answer, question_type, colours in rows:
        colours = list(colours) + [None] * (7 - len(colours))
        values = {"id": sample_id, "question": question, "options": options, "explanation": "",
                  "img_type": "['Photographs']", "answer": answer, "topic_difficulty": "Medium",
                  "question_type": question_type, "subfield": "Art History",
                  **{f"image_{k}": image_cell(c) for k, c in enumerate(colours, start=1)}}
        for name in MMMU_TYPES:
            columns[name].append(values[name])
    return columns


@pytest.fixture
def mmmu_data(tmp_path):
    write_parquet(tmp_path / "MMMU/data/validation-00000-of-00001.parquet", mmmu_columns([
        ("validation_Art_Theory_12", MC_QUESTION, "['<image 3>', 'Both', 'Neither']", "B",
         "multiple-choice", ["red", "green", "blue", "white"]),
        ("validation_Math_3", OPEN_QUESTION, "[]", "12", "open", ["white"]),
    ]), MMMU_TYPES)
    return tmp_path


def test_mmmu_val_prompts_and_image_order(mmmu_data):
    mc, open_ = get_task("mmmu_val").samples(mmmu_data)
    assert (mc.prompt, open_.prompt) == (MC_PROMPT, OPEN_PROMPT)
    # image_1, image_2 named in the question and image_3 in an option, sorted by name rather than
    # by where they appear; image_4 is named nowhere and left out
    assert [colour_of(i) for i in mc.images] == ["red", "green", "blue"]
    assert [colour_of(i) for i in open_.images] == ["white"]
    assert mc.id == "validation_Art_Theory_12"
    assert mc.fields == {"id": "validation_Art_Theory_12", "question_type": "multiple-choice",
                         "options": "['<image 3>', 'Both', 'Neither']", "answer": "B",
                         "subject": "Art_Theory"}
    assert open_.fields["subject"] == "Math" and open_.fields["options"] == "[]"


def test_mmmu_generation_settings():
    # val: 128 new tokens (the template YAML); test: 512; no stop string, so lmms-eval's "\n\n"
    for name, tokens in (("mmmu_val", 128), ("mmmu_dev", 128), ("mmmu_test", 512)):
        gen = get_task(name).generation
        assert (gen.max_new_tokens, gen.temperature, gen.do_sample) == (tokens, 0.0, False)
        assert gen.until == ("\n\n",)


def test_mmmu_test_needs_no_answer_column(tmp_path):
    columns = mmmu_columns([("test_Math_1", OPEN_QUESTION, "[]", "", "open", ["blue"])])
    del columns["answer"]
    write_parquet(tmp_path / "MMMU/data/test-00000-of-00001.parquet", columns, MMMU_TYPES)
    [sample] = get_task("mmmu_test").samples(tmp_path)
    assert sample.fields["answer"] is None and sample.prompt == OPEN_PROMPT
    assert sample.generation.max_new_tokens == 512


def test_a_placeholder_without_its_image_is_reported(tmp_path):
    path = write_parquet(tmp_path / "MMMU/data/dev-00000-of-00001.parquet", mmmu_columns([
        ("dev_Art_1", "See <image 1> and <image 2>.", "['a', 'b']", "A", "multiple-choice", ["red"]),
    ]), MMMU_TYPES)
    with pytest.raises(TaskDataError, match=re.escape(f"{path}: row 0: the prompt names <image 2> "
                                                      "but column 'image_2' holds no image")):
        list(get_task("mmmu_dev").samples(tmp_path))


def test_options_that_are_not_a_list_literal_are_reported(tmp_path):
    write_parquet(tmp_path / "MMMU/data/dev-00000-of-00001.parquet", mmmu_columns([
        ("dev_Art_1", "Q <image 1>", "a, b", "A", "multiple-choice", ["red"]),
    ]), MMMU_TYPES)
    with pytest.raises(TaskDataError, match="row 0: column 'options': not a Python list literal"):
        list(get_task("mmmu_dev").samples(tmp_path))


def test_mmmu_from_the_vlmevalkit_tsv(tmp_path):
    # MMMU_DEV_VAL.tsv holds the official ids in its `id` column
    header = ["index", "id", "question", "A", "B", "C", "D", "answer", "split", "image"]
    two_images = str([b64("green"), b64("red")])  # VLMEvalKit stores several as a list literal
    write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", header, [
        ["1", "dev_Art_1", "Dev question <image 1>", "x", "y", "", "", "A", "dev", b64("white")],
        ["2", "validation_Art_Theory_4", MC_QUESTION.replace(" with <image 1>", ""), "p", "q", "r", "",
         "C", "validation", two_images],
        ["3", "validation_Math_7", OPEN_QUESTION, "", "", "", "", "12", "validation", "1"],
    ])
    mc, open_ = get_task("mmmu_val").samples(tmp_path)
    assert mc.prompt == ("Compare <image 2>. Which is older?\nA. p\nB. q\nC. r\n\n"
                         "Answer with the option's letter from the given choices directly.")
    assert [colour_of(i) for i in mc.images] == ["red"]  # the 2nd image of the list is image_2
    assert mc.fields["options"] == "['p', 'q', 'r']" and mc.fields["question_type"] == "multiple-choice"
    assert open_.prompt == OPEN_PROMPT and colour_of(open_.images[0]) == "white"
    assert mc.id == "validation_Art_Theory_4" and mc.fields["subject"] == "Art_Theory"
    assert open_.fields == {"id": "validation_Math_7", "question_type": "open", "options": "[]",
                            "answer": "12", "subject": "Math"}
    [dev] = get_task("mmmu_dev").samples(tmp_path)
    assert dev.id == "dev_Art_1"


def test_a_tsv_without_ids_builds_them_from_split_category_and_index(tmp_path):
    header = ["index", "question", "A", "B", "answer", "split", "category", "image"]
    write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", header, [
        ["17", "Q <image 1>", "x", "y", "A", "validation", "Art Theory", b64("red")],
    ])
    [sample] = get_task("mmmu_val").samples(tmp_path)
    # by hand: "<split>_<category, spaces as underscores>_<index>"
    assert sample.id == "validation_Art_Theory_17" and sample.fields["subject"] == "Art_Theory"


def test_a_tsv_without_ids_or_category_is_refused(tmp_path):
    header = ["index", "question", "A", "B", "answer", "split", "image"]
    path = write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", header,
                     [["17", "Q <image 1>", "x", "y", "A", "validation", b64("red")]])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}:2: no 'id' column value, and no "
                                                      "'category' to build an id")):
        list(get_task("mmmu_val").samples(tmp_path))


def test_submission_file_maps_ids_to_answers(tmp_path):
    answers = {"test_Art_1": "B", "test_Math_2": "12.5"}
    path = write_submission(answers, tmp_path / "mmmu_test_for_submission.json",
                            expected_ids=["test_Math_2", "test_Art_1"])
    assert json.loads(path.read_text()) == answers
    with pytest.raises(SubmissionError, match=r"1 question\(s\) without an answer \['test_Bio_3'\], "
                                              r"0 unknown"):
        write_submission(answers, tmp_path / "s.json", expected_ids=[*answers, "test_Bio_3"])
    # an open answer may be the candidates the official parse reads
    write_submission({"test_Math_2": ["12.5", 12.5]}, tmp_path / "open.json")
    assert json.loads((tmp_path / "open.json").read_text()) == {"test_Math_2": ["12.5", 12.5]}
    with pytest.raises(SubmissionError, match="must map question ids to text or a list of candidates"):
        write_submission({"test_Art_1": {"letter": "B"}}, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()
