"""Locating and reading the data: the registry, `data_files`, image conversion, the hub path without
`datasets`, and the errors for missing files, missing columns, bad rows and bad images."""

from __future__ import annotations

import base64
import re
import sys

import pytest

from omnivision.eval.tasks import TASKS, TaskDataError, UnknownTaskError, get_task
from tests.eval.tasks.files import IMAGE, b64, colour_of, image_cell, pa, png, write_parquet, write_tsv

POPE_TYPES = {"question_id": pa.string(), "question": pa.string(), "answer": pa.string(),
              "image": IMAGE, "category": pa.string()}
TSV_HEADER = ["index", "image", "question", "answer", "category"]


def pope_shard(path, images, **drop):
    n = len(images)
    columns = {"question_id": [str(i) for i in range(n)], "question": ["Is there a dog?"] * n,
               "answer": ["yes"] * n, "image": images, "category": ["random"] * n}
    for name in drop:
        del columns[name]
    return write_parquet(path, columns, POPE_TYPES)


def test_registry_has_lmms_evals_task_names():
    assert sorted(TASKS) == sorted(["pope", "pope_adv", "pope_pop", "pope_random", "scienceqa_img",
                                    "mmmu_val", "mmmu_dev", "mmmu_test", "chartqa", "mmvet",
                                    "shapes_qa", "shapes_pope"])
    assert all(task.name == name for name, task in TASKS.items())
    with pytest.raises(UnknownTaskError, match="unknown task 'pope_full' .known: pope, pope_adv"):
        get_task("pope_full")


def test_data_files_name_the_shards_and_the_tsv():
    text = get_task("pope_adv").data_files
    assert "<data>/POPE/Full/adversarial-*.parquet" in text
    assert "<data>/POPE/Full/adversarial/*.parquet" in text
    assert "lmms-lab/POPE" in text and "<data>/POPE.tsv" in text
    assert "<data>/MMMU/data/validation-*.parquet" in get_task("mmmu_val").data_files
    assert "<data>/MMMU_DEV_VAL.tsv" in get_task("mmmu_val").data_files
    assert "<data>/ScienceQA/ScienceQA-IMG/test-*.parquet" in get_task("scienceqa_img").data_files


def test_missing_folder_is_reported_before_iterating(tmp_path):
    with pytest.raises(TaskDataError, match=re.escape(f"{tmp_path / 'nope'}: no such data folder")):
        get_task("pope").samples(tmp_path / "nope")


def test_folder_without_the_files_lists_where_it_looked(tmp_path):
    with pytest.raises(TaskDataError) as e:
        get_task("pope").samples(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path}: no data found; looked for {tmp_path}/POPE/data/test-*.parquet")
    assert f"{tmp_path}/POPE.tsv" in message and "\n" not in message


def decode_all(samples) -> list:
    return [list(s.images) for s in samples]


def test_parquet_missing_column_names_file_and_column(tmp_path):
    path = pope_shard(tmp_path / "POPE/data/test-00000-of-00001.parquet", [image_cell("red")], answer=True)
    with pytest.raises(TaskDataError, match=re.escape(f"{path}: missing column 'answer' (has question_id,")):
        list(get_task("pope").samples(tmp_path))


def test_undecodable_image_bytes_name_file_and_row(tmp_path):
    path = pope_shard(tmp_path / "POPE/data/test-00000-of-00001.parquet",
                      [image_cell("red"), {"bytes": b"\x89PNG not really", "path": "x.png"}])
    samples = get_task("pope").samples(tmp_path)
    assert colour_of(next(samples).images[0]) == "red"  # row 0 is fine
    bad = next(samples)  # images are decoded when looked at, not when the samples are listed
    message = f"{path}: row 1: column 'image': could not decode image"
    with pytest.raises(TaskDataError, match=re.escape(message)):
        bad.images[0]


def test_image_struct_without_bytes_is_reported(tmp_path):
    path = pope_shard(tmp_path / "POPE/data/test-00000-of-00001.parquet", [{"bytes": None, "path": "x.png"}])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}: row 0: column 'image': image has no "
                                                      "embedded bytes (path 'x.png')")):
        decode_all(get_task("pope").samples(tmp_path))


def test_a_file_that_is_not_parquet_is_reported(tmp_path):
    path = tmp_path / "POPE/data/test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TaskDataError, match=re.escape(f"{path}: not a readable parquet file")):
        list(get_task("pope").samples(tmp_path))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_images_are_converted_to_rgb(tmp_path, mode):
    pope_shard(tmp_path / "POPE/data/test-00000-of-00001.parquet",
               [{"bytes": png("white", mode=mode), "path": None}])
    [sample] = get_task("pope").samples(tmp_path)
    assert sample.images[0].mode == "RGB" and colour_of(sample.images[0]) == "white"


def test_tsv_missing_column_names_file_and_column(tmp_path):
    path = write_tsv(tmp_path / "POPE.tsv", ["index", "image", "question", "answer"],
                     [["1", b64("red"), "Q?", "Yes"]])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}: missing column 'category'")):
        list(get_task("pope").samples(tmp_path))


def test_tsv_bad_base64_names_the_line_after_a_multiline_row(tmp_path):
    # the quoted question of the first row spans lines 2-3, so the bad row starts on line 4
    path = write_tsv(tmp_path / "POPE.tsv", TSV_HEADER, [
        ["1", b64("red"), "Is there\na dog?", "Yes", "random"],
        ["2", "abc" * 30, "Q?", "No", "random"],
    ])
    samples = get_task("pope").samples(tmp_path)
    assert next(samples).prompt == "Is there\na dog?\nAnswer the question using a single word or phrase."
    message = f"{path}:4: column 'image': image is not valid base64"
    with pytest.raises(TaskDataError, match=re.escape(message)):
        decode_all(samples)


def test_tsv_base64_that_is_no_image_is_reported(tmp_path):
    path = write_tsv(tmp_path / "POPE.tsv", TSV_HEADER, [
        ["1", base64.b64encode(b"plain text, not an image" * 4).decode(), "Q?", "Yes", "random"]])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}:2: column 'image': could not decode image")):
        decode_all(get_task("pope").samples(tmp_path))


def test_tsv_reference_to_no_image_is_reported(tmp_path):
    path = write_tsv(tmp_path / "POPE.tsv", TSV_HEADER, [
        ["1", b64("red"), "Q?", "Yes", "random"],
        ["2", "99", "Q?", "No", "random"],
    ])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}:3: image refers to index '99', but no row "
                                                      "with that index has an image")):
        list(get_task("pope").samples(tmp_path))


def test_tsv_row_with_the_wrong_number_of_fields_is_reported(tmp_path):
    path = tmp_path / "POPE.tsv"
    path.write_text("index\timage\tquestion\tanswer\tcategory\n"
                    f"1\t{b64('red')}\tQ?\tYes\trandom\n"
                    f"2\t{b64('red')}\tQ?\tNo\n")
    with pytest.raises(TaskDataError, match=re.escape(f"{path}:3: expected 5 tab-separated fields, found 4")):
        list(get_task("pope").samples(tmp_path))


def test_hub_name_without_datasets_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(TaskDataError, match=re.escape("hf://lmms-lab/POPE (default, test): reading a hub "
                                                      "dataset needs the `datasets` package")):
        list(get_task("pope").samples("hf://lmms-lab"))
    with pytest.raises(TaskDataError, match=re.escape("hf://someone/MyPOPE (Full, adversarial):")):
        list(get_task("pope_adv").samples("hf://someone/MyPOPE"))
