"""The generated-data tasks `shapes_qa` and `shapes_pope` on a tiny dataset from
`generate_shapes_dataset`: where the folder is found, what each sample holds, that the fields fit
the scorers, and the errors for missing or bad data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from omnivision.data.shapes_dataset import generate_shapes_dataset
from omnivision.eval.scoring import scorer_for
from omnivision.eval.tasks import TASKS, TaskDataError, get_task

SEED = 5


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A benchmark folder with the dataset generated into its `shapes/` subfolder."""
    root = tmp_path_factory.mktemp("bench")
    generate_shapes_dataset(root / "shapes", 12, SEED)
    return root


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_registered():
    assert {"shapes_qa", "shapes_pope"} <= set(TASKS)
    for name in ("shapes_qa", "shapes_pope"):
        gen = get_task(name).generation
        assert (gen.do_sample, gen.temperature, gen.num_beams) == (False, 0.0, 1)  # greedy
        assert gen.max_new_tokens <= 32


def test_qa_samples_follow_the_file(data):
    folder = data / "shapes"
    expected = lines(folder / "qa.jsonl")
    samples = list(get_task("shapes_qa").samples(data))
    assert [s.id for s in samples] == [e["id"] for e in expected]
    for s, e in zip(samples, expected):
        assert s.task == "shapes_qa"
        assert s.prompt == e["question"]  # as written, no suffix
        assert s.fields == {"question_id": e["id"], "image": e["image"], "question": e["question"],
                            "answer": e["answer"], "qtype": e["qtype"], "extra": e.get("extra", {})}
        [image] = s.images
        assert image.mode == "RGB"
        with Image.open(folder / e["image"]) as original:
            assert np.array_equal(np.asarray(image), np.asarray(original.convert("RGB")))


def test_pope_samples_carry_the_strategy(data):
    expected = lines(data / "shapes" / "pope.jsonl")
    samples = list(get_task("shapes_pope").samples(data))
    assert len(samples) == len(expected) > 0
    for s, e in zip(samples, expected):
        assert s.prompt == e["question"]
        assert s.fields["category"] == e["extra"]["strategy"]
        assert s.fields["object"] == e["extra"]["object"]
        assert (s.fields["question_id"], s.fields["answer"]) == (e["id"], e["answer"])
    assert {s.fields["category"] for s in samples} == {"random", "popular", "adversarial"}


@pytest.mark.parametrize("task", ["shapes_qa", "shapes_pope"])
def test_fields_fit_the_scorer(data, task):
    """A perfect model scores 1 overall and in every group; always "wrong" scores 0."""
    scorer = scorer_for(task)
    samples = list(get_task(task).samples(data))
    for prediction, accuracy in ((lambda s: s.fields["answer"], 1.0), (lambda s: "purple haze", 0.0)):
        records = []
        for s in samples:
            record = {**s.fields, "prediction": prediction(s)}
            scored = scorer.score(record)
            records.append({**record, "score": scored.score, "parsed": scored.parsed})
        table = scorer.aggregate(records)
        assert table["accuracy"] == accuracy
        groups = {s.fields["qtype" if task == "shapes_qa" else "category"] for s in samples}
        assert all(table[g]["accuracy"] == accuracy for g in groups)


def test_dataset_folder_itself_and_limit(data):
    """DATA_DIR holding meta.json is the dataset; otherwise DATA_DIR/shapes is."""
    inside = [s.id for s in get_task("shapes_qa").samples(data / "shapes", limit=5)]
    beside = [s.id for s in get_task("shapes_qa").samples(data, limit=5)]
    assert inside == beside and len(inside) == 5
    assert list(get_task("shapes_pope").samples(data, limit=0)) == []
    with pytest.raises(ValueError, match="limit"):
        get_task("shapes_qa").samples(data, limit=-1)


def test_missing_data(tmp_path):
    task = get_task("shapes_qa")
    with pytest.raises(TaskDataError, match="no such data folder"):
        task.samples(tmp_path / "nowhere")
    with pytest.raises(TaskDataError, match=r"no generated dataset.*shapes/meta\.json"):
        task.samples(tmp_path)
    with pytest.raises(TaskDataError, match="local folder"):
        task.samples("hf://lmms-lab")
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(TaskDataError, match="missing qa.jsonl"):
        task.samples(tmp_path)


@pytest.fixture
def copy(data, tmp_path):
    shutil.copytree(data / "shapes", tmp_path / "shapes")
    return tmp_path / "shapes"


def test_bad_record_names_file_and_line(copy):
    rows = (copy / "qa.jsonl").read_text().splitlines()
    rows[2] = rows[2].replace('"question"', '"quest"')
    (copy / "qa.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(TaskDataError, match=r"qa\.jsonl:3: missing field 'question'"):
        get_task("shapes_qa").samples(copy)


def test_wrong_kind_of_question(copy):
    shutil.copy(copy / "pope.jsonl", copy / "qa.jsonl")
    with pytest.raises(TaskDataError, match=r"qa\.jsonl:1: shapes_qa expects qtype a type other"):
        get_task("shapes_qa").samples(copy)


def test_missing_image_is_found_before_the_first_sample(copy):
    first = lines(copy / "pope.jsonl")[0]["image"]
    (copy / first).unlink()
    with pytest.raises(TaskDataError, match=rf"pope\.jsonl:1: image '{first}' not found"):
        get_task("shapes_pope").samples(copy)
