"""POPE tasks: lmms-lab/POPE parquet shards (default config and Full), VLMEvalKit's POPE.tsv with
shared rows and image references, prompts, generation settings and `limit`."""

from __future__ import annotations

import pytest

from omnivision.eval.tasks import DEFAULT_UNTIL, get_task
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, write_parquet, write_tsv

POPE_TYPES = {"id": pa.string(), "question_id": pa.string(), "question": pa.string(),
              "answer": pa.string(), "image_source": pa.string(), "image": IMAGE,
              "category": pa.string()}

# lmms-eval: the question stripped, then "\n" and the default post-prompt (worked out by hand)
DOG_PROMPT = "Is there a dog in the image?\nAnswer the question using a single word or phrase."
CAT_PROMPT = "Is there a cat in the image?\nAnswer the question using a single word or phrase."


def pope_rows(*rows):
    """rows: (id, question_id, question, answer, colour, category)."""
    names = ["id", "question_id", "question", "answer", "image", "category"]
    columns = {name: [r[i] for r in rows] for i, name in enumerate(names)}
    columns["image"] = [image_cell(c) for c in columns["image"]]
    columns["image_source"] = [f"COCO_val2014_{i}" for i in columns["id"]]
    return {name: columns[name] for name in POPE_TYPES if name in columns}


@pytest.fixture
def pope_data(tmp_path):
    write_parquet(tmp_path / "POPE/data/test-00000-of-00002.parquet",
                  pope_rows(("0", "1", "  Is there a dog in the image? ", "yes", "red", "adversarial"),
                            ("1", "2", "Is there a cat in the image?", "no", "green", "adversarial")),
                  POPE_TYPES)
    write_parquet(tmp_path / "POPE/data/test-00001-of-00002.parquet",
                  pope_rows(("2", "1", "Is there a cat in the image?\n", "no", "blue", "popular")),
                  POPE_TYPES)
    return tmp_path


def test_pope_reads_the_default_config_shards_in_order(pope_data):
    samples = list(get_task("pope").samples(pope_data))
    assert [s.id for s in samples] == ["0", "1", "2"]
    assert [s.prompt for s in samples] == [DOG_PROMPT, CAT_PROMPT, CAT_PROMPT]
    assert [colour_of(s.images[0]) for s in samples] == ["red", "green", "blue"]
    assert samples[2].fields == {"question_id": "1", "question": "Is there a cat in the image?\n",
                                 "answer": "no", "category": "popular"}
    assert all(s.task == "pope" and len(s.images) == 1 for s in samples)


def test_pope_limit_counts_samples_across_shards(pope_data):
    task = get_task("pope")
    assert [s.id for s in task.samples(pope_data, limit=2)] == ["0", "1"]
    assert [s.id for s in task.samples(pope_data, limit=3)] == ["0", "1", "2"]
    assert list(task.samples(pope_data, limit=0)) == []
    with pytest.raises(ValueError, match="limit"):
        task.samples(pope_data, limit=-1)


def test_pope_generation_settings_follow_the_yamls():
    # pope.yaml: 128 new tokens, temperature 0, top_p 1.0, one beam, no sampling, no stop string
    # (so lmms-eval's "\n\n"); the per-strategy YAMLs state top_p 0
    pope = get_task("pope").generation
    assert (pope.max_new_tokens, pope.temperature, pope.do_sample, pope.num_beams, pope.top_p,
            pope.until) == (128, 0.0, False, 1, 1.0, ("\n\n",))
    assert DEFAULT_UNTIL == ("\n\n",)
    for name in ("pope_adv", "pope_pop", "pope_random"):
        gen = get_task(name).generation
        assert (gen.max_new_tokens, gen.do_sample, gen.top_p, gen.until) == (128, False, 0.0, ("\n\n",))
    assert pope.as_kwargs() == {"max_new_tokens": 128, "temperature": 0.0, "do_sample": False,
                                "num_beams": 1, "until": ["\n\n"], "top_p": 1.0}


@pytest.mark.parametrize("name, split", [("pope_adv", "adversarial"), ("pope_pop", "popular"),
                                         ("pope_random", "random")])
def test_each_strategy_reads_its_split_of_the_full_config(tmp_path, name, split):
    for other in ("adversarial", "popular", "random"):
        write_parquet(tmp_path / f"POPE/Full/{other}-00000-of-00001.parquet",
                      pope_rows((f"{other}-0", "7", "Is there a dog in the image?", "yes",
                                 "white" if other == split else "red", other)), POPE_TYPES)
    [sample] = get_task(name).samples(tmp_path)
    assert sample.id == f"{split}-0" and sample.fields["category"] == split
    assert colour_of(sample.images[0]) == "white" and sample.prompt == DOG_PROMPT


def test_strategy_split_in_the_parquet_converter_layout_without_category(tmp_path):
    # refs/convert/parquet keeps a split's files in <config>/<split>/; a missing category column
    # is the split's own strategy
    columns = pope_rows(("5", "9", "Is there a dog in the image?", "no", "blue", "x"))
    del columns["category"]
    write_parquet(tmp_path / "POPE/Full/popular/0000.parquet", columns, POPE_TYPES)
    [sample] = get_task("pope_pop").samples(tmp_path)
    assert sample.fields == {"question_id": "9", "question": "Is there a dog in the image?",
                             "answer": "no", "category": "popular"}


def write_pope_tsv(path):
    # index 11 reuses row 10's image, index 12 refers forward to row 14, index 13 has no image
    return write_tsv(path / "POPE.tsv", ["index", "image", "question", "answer", "category"], [
        ["10", b64("red"), 'Is there a "dog" in the image?', "Yes", "adversarial,popular"],
        ["11", "10", "Is there a cat in the image?", "No", "random"],
        ["12", "14", "Is there a cat in the image?", "No", "popular"],
        ["13", "", "Is there a cow in the image?", "No", "random"],
        ["14", b64("blue"), "Is there a dog in the image?", "Yes", "adversarial, random"],
    ])


def test_pope_from_the_vlmevalkit_tsv_resolves_image_references(tmp_path):
    write_pope_tsv(tmp_path)
    samples = list(get_task("pope").samples(tmp_path))
    assert [s.id for s in samples] == ["10", "11", "12", "14"]  # 13 has no image: dropped
    assert [colour_of(s.images[0]) for s in samples] == ["red", "red", "blue", "blue"]
    assert samples[0].prompt == ('Is there a "dog" in the image?\n'
                                 "Answer the question using a single word or phrase.")
    assert samples[0].fields == {"question_id": "10", "question": 'Is there a "dog" in the image?',
                                 "answer": "Yes", "category": "adversarial,popular"}


@pytest.mark.parametrize("name, ids", [("pope_adv", ["10", "14"]), ("pope_pop", ["10", "12"]),
                                       ("pope_random", ["11", "14"])])
def test_strategy_tasks_keep_the_tsv_rows_listing_their_strategy(tmp_path, name, ids):
    write_pope_tsv(tmp_path)
    samples = list(get_task(name).samples(tmp_path))
    assert [s.id for s in samples] == ids
    strategy = {"pope_adv": "adversarial", "pope_pop": "popular", "pope_random": "random"}[name]
    assert {s.fields["category"] for s in samples} == {strategy}


def test_parquet_shards_are_preferred_over_the_tsv(pope_data):
    write_pope_tsv(pope_data)
    assert [s.id for s in get_task("pope").samples(pope_data)] == ["0", "1", "2"]
