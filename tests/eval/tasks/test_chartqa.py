"""`chartqa`: lmms-lab/ChartQA (test, human and augmented questions) shards and VLMEvalKit's
ChartQA_TEST.tsv; the post-prompt and settings."""

from __future__ import annotations

from omnivision.eval.tasks import get_task
from omnivision.eval.tasks.chartqa import split_type
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, write_parquet, write_tsv

CHARTQA_TYPES = {"type": pa.string(), "question": pa.string(), "answer": pa.string(), "image": IMAGE}


def test_chartqa_prompt_fields_and_settings(tmp_path):
    write_parquet(tmp_path / "ChartQA/data/test-00000-of-00001.parquet", {
        "type": ["human_test", "augmented_test"],
        "question": ["What is the highest value?", "Which year had 12%?"],
        "answer": ["42", "2019"],
        "image": [image_cell("red"), image_cell("blue")],
    }, CHARTQA_TYPES)
    human, augmented = get_task("chartqa").samples(tmp_path)
    # by hand: the question, "\n", the default post-prompt
    assert human.prompt == "What is the highest value?\nAnswer the question with a single word."
    assert augmented.prompt == "Which year had 12%?\nAnswer the question with a single word."
    assert (human.id, augmented.id) == ("0", "1")
    assert human.fields == {"question": "What is the highest value?", "answer": "42", "type": "human_test"}
    assert augmented.fields["type"] == "augmented_test" and colour_of(augmented.images[0]) == "blue"
    gen = human.generation
    assert (gen.max_new_tokens, gen.temperature, gen.do_sample, gen.until) == (16, 0.0, False, ("\n\n",))


def test_chartqa_from_the_vlmevalkit_tsv(tmp_path):
    write_tsv(tmp_path / "ChartQA_TEST.tsv", ["index", "image", "question", "answer", "split"], [
        ["0", b64("green"), "What is the highest value?", "42", "test_human"],
        ["1", "0", "How many bars?", "[3]", "test_augmented"],
    ])
    first, second = get_task("chartqa").samples(tmp_path)
    assert first.prompt == "What is the highest value?\nAnswer the question with a single word."
    assert (first.fields["type"], second.fields["type"]) == ("human_test", "augmented_test")
    assert second.id == "1" and second.fields["answer"] == "[3]" and colour_of(second.images[0]) == "green"


def test_split_type_names():
    assert [split_type(s) for s in ("test_human", "test_augmented", "Human", "other", "", None)] == [
        "human_test", "augmented_test", "human_test", "other", "unknown", "unknown"]


def test_a_tsv_without_split_column_says_the_type_is_unknown(tmp_path):
    write_tsv(tmp_path / "ChartQA_TEST.tsv", ["index", "image", "question", "answer"],
              [["0", b64("green"), "What is the highest value?", "42"]])
    [sample] = get_task("chartqa").samples(tmp_path)
    assert sample.fields["type"] == "unknown"
