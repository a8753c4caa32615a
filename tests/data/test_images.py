"""Load-time image checks: missing, undecodable and escaping images stop loading or are counted."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from omnivision.data.formats import DataError, read_captions, read_conversations
from omnivision.data.images import check_images
from omnivision.data.records import CaptionPair, Conversation


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / "good.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(images / "sub" / "good.jpg")
    (images / "text.png").write_text("not an image at all")
    full = (images / "good.png").read_bytes()
    (images / "truncated.png").write_bytes(full[:len(full) // 2])
    Image.new("RGB", (8, 8)).save(images / "image.gif")  # a format load_image refuses
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")  # exists and decodes, but outside
    return images


def _captions(tmp_path, names):
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps({"image": n, "caption": "c"}) + "\n" for n in names))
    return read_captions(path), path


def test_good_images_pass_and_each_is_checked_once(tmp_path, root):
    records, _ = _captions(tmp_path, ["good.png", "sub/good.jpg", "good.png"])
    kept, report = check_images(records, root)
    assert kept == records
    assert (report.checked, report.kept, report.dropped) == (2, 3, 0)


@pytest.mark.parametrize("name,words", [
    ("missing.png", "not found under"),
    ("text.png", "cannot be decoded"),
    ("truncated.png", "cannot be decoded"),
    ("image.gif", "unsupported image format GIF"),
    ("../outside.png", "outside the image folder"),
    ("sub/../../outside.png", "outside the image folder"),
    ("/etc/passwd", "outside the image folder"),
    ("C:\\\\images\\\\x.png", "outside the image folder"),
    ("..\\\\outside.png", "outside the image folder"),
])
def test_bad_image_names_the_record_file_and_line(tmp_path, root, name, words):
    records, path = _captions(tmp_path, ["good.png", "good.png", name, "good.png"])
    with pytest.raises(DataError) as info:
        check_images(records, root)
    message = str(info.value)
    assert message.startswith(f"{path}:3: image {name!r} ") and words in message
    assert "\n" not in message


def test_skip_bad_drops_and_counts_by_reason(tmp_path, root):
    names = ["good.png", "missing.png", "text.png", "truncated.png", "../outside.png",
             "/abs.png", "sub/good.jpg", "missing.png"]
    records, path = _captions(tmp_path, names)
    kept, report = check_images(records, root, skip_bad=True)
    assert [r.image for r in kept] == ["good.png", "sub/good.jpg"]
    assert dict(report.skipped) == {"missing": 2, "undecodable": 2, "outside root": 2}
    assert (report.kept, report.dropped, report.checked) == (2, 6, 7)
    assert report.first_problems[0].startswith(f"{path}:2: image 'missing.png'")
    assert report.summary() == ("kept 2 of 8 records (7 images checked); "
                                "skipped 6 (outside root 2, missing 2, undecodable 2)")


def test_records_without_image_are_kept_and_in_memory_records_are_named(tmp_path, root):
    text_only = Conversation("t", None, [("user", "hi"), ("assistant", "hello")])
    records = [text_only, CaptionPair("good.png", "c"), CaptionPair("nope.png", "c")]
    with pytest.raises(DataError, match=r"^<records>:3: image 'nope.png'"):
        check_images(records, root)
    kept, report = check_images(records, root, skip_bad=True)
    assert kept == records[:2] and report.checked == 2


def test_conversations_from_llava_json(tmp_path, root):
    path = tmp_path / "sft.json"
    rows = [{"id": str(n), "image": img, "conversations": [
        {"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
        for n, img in enumerate(["good.png", "text.png"])]
    text = json.dumps(rows, indent=2)
    path.write_text(text)
    second = [n for n, line in enumerate(text.splitlines(), start=1) if line == "  {"][1]
    with pytest.raises(DataError) as info:
        check_images(read_conversations(path), root)
    assert info.value.line == second and "text.png" in info.value.problem


def test_missing_image_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_images([CaptionPair("a.png", "c")], tmp_path / "nowhere")
