"""Dataset file formats: round trips, real line numbers in JSON and JSONL, one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from omnivision.data.formats import (DataError, conversation_to_llava, read_captions,
                                     read_conversations, read_preferences, read_qa, write_json,
                                     write_jsonl)
from omnivision.data.records import CaptionPair, Conversation, PreferencePair, QAItem

GOOD = {"id": "a", "image": "x.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}


def _conv(**changes):
    return {**GOOD, **changes}


def _turns(*values):
    roles = ["human", "gpt"]
    return [{"from": roles[n % 2], "value": v} for n, v in enumerate(values)]


def _jsonl(tmp_path: Path, rows, name="data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _error(read, path: Path) -> DataError:
    with pytest.raises(DataError) as info:
        read(path)
    message = str(info.value)
    assert "\n" not in message
    return info.value


def test_conversation_round_trip_through_jsonl_and_json(tmp_path):
    convs = [Conversation("1", "img/a.png", [("user", "What colour?"), ("assistant", "red"),
                                             ("user", "And the shape?"), ("assistant", "circle")]),
             Conversation("2", None, [("user", "Hi"), ("assistant", "Hello")])]
    write_jsonl(tmp_path / "c.jsonl", convs)
    write_json(tmp_path / "c.json", [conversation_to_llava(c) for c in convs])
    for name in ("c.jsonl", "c.json"):
        back = read_conversations(tmp_path / name)
        assert back == convs
    llava = conversation_to_llava(convs[0])
    assert llava["conversations"][0] == {"from": "human", "value": "<image>\nWhat colour?"}
    assert "image" not in conversation_to_llava(convs[1])


@pytest.mark.parametrize("value", ["<image>\nWhat is this?", "What is this?\n<image>",
                                   "What is this? <image>", "What is this?"])
def test_image_marker_is_removed_wherever_it_is(tmp_path, value):
    path = _jsonl(tmp_path, [_conv(conversations=_turns(value, "A cat."))])
    (c,) = read_conversations(path)
    assert c.turns[0] == ("user", "What is this?") and c.image == "x.png"


def test_integer_ids_and_sources(tmp_path):
    path = _jsonl(tmp_path, ["", _conv(id=7), "   ", _conv(id="b")])
    a, b = read_conversations(path)
    assert a.id == "7" and a.source == (str(path), 2)
    assert b.id == "b" and b.source == (str(path), 4)


BAD_CONVERSATIONS = [
    ('{"id": "a", "image": "x.png", "conversations": [}', "invalid JSON"),
    ('["not", "an", "object"]', "expected a JSON object"),
    (_conv(id=None), "missing field 'id'"),
    (_conv(id=""), "'id' is empty"),
    (_conv(image=["a.png", "b.png"]), "'image' must be a string"),
    (_conv(conversations=[]), "non-empty list"),
    (_conv(conversations="hello"), "non-empty list"),
    (_conv(conversations=[{"from": "gpt", "value": "<image>x"}, {"from": "human", "value": "y"}]),
     "must alternate"),
    (_conv(conversations=_turns("<image>q", "a", "q2", "a2")[:3]), "must end with a 'gpt'"),
    (_conv(conversations=[{"from": "system", "value": "x"}]), "'human' or 'gpt'"),
    (_conv(conversations=_turns("<image>q", "   ")), "conversations[1].value' is empty"),
    (_conv(conversations=_turns("<image>q", 5)), "conversations[1].value' must be a string"),
    (_conv(conversations=[{"from": "human"}, {"from": "gpt", "value": "a"}]),
     "missing field 'conversations[0].value'"),
    (_conv(conversations=_turns("<image>q", "a", "<image> again", "b")),
     "conversations[2].value has an <image> marker"),
    (_conv(conversations=_turns("<image><image>q", "a")), "2 <image> markers"),
    ({"id": "a", "conversations": _turns("<image>q", "a")}, "record has no image"),
    (_conv(conversations=[_turns("<image>q", "a")[0], "a"]), "conversations[1] must be an object"),
]


@pytest.mark.parametrize("bad,problem", BAD_CONVERSATIONS)
def test_bad_conversation_in_jsonl_names_file_and_line(tmp_path, bad, problem):
    path = _jsonl(tmp_path, [GOOD, "", GOOD, bad, GOOD])
    err = _error(read_conversations, path)
    assert str(err).startswith(f"{path}:4: ")
    assert problem in err.problem
    assert (err.file, err.line) == (str(path), 4)


@pytest.mark.parametrize("bad,problem", BAD_CONVERSATIONS[2:])
def test_bad_conversation_in_json_array_names_its_real_line(tmp_path, bad, problem):
    path = tmp_path / "data.json"
    text = json.dumps([GOOD, GOOD], indent=2)  # two records of 12 lines each, then the bad one
    text = text[:-2] + ",\n  " + json.dumps(bad) + "\n]\n"
    path.write_text(text)
    bad_line = text.splitlines().index("  " + json.dumps(bad)) + 1
    err = _error(read_conversations, path)
    assert str(err).startswith(f"{path}:{bad_line}: ") and problem in err.problem


OK = '{"image": "a.png", "caption": "x"}'


@pytest.mark.parametrize("text,line,problem", [
    (f'[\n{OK},\n{{"image": \n}}\n]', 4, "invalid JSON"),
    (f'[\n  {OK}\n  {OK}\n]', 3, "expected ',' or ']'"),
    (f'[\n  {OK},\n', 3, "invalid JSON"),
    (f'[\n  {OK}\n', 3, "not closed"),
    ('[]\n\n{"id": 1}', 3, "extra data"),
])
def test_broken_json_arrays(tmp_path, text, line, problem):
    path = tmp_path / "d.json"
    path.write_text(text)
    err = _error(read_captions, path)
    assert err.line == line and problem in err.problem


def test_json_and_jsonl_are_told_apart_by_content(tmp_path):
    pairs = [CaptionPair("a.png", "A cat."), CaptionPair("b.png", "A dog.")]
    (tmp_path / "weird.txt").write_text("\n  " + json.dumps([{"image": "a.png", "caption": "A cat."},
                                                             {"image": "b.png", "caption": "A dog."}]))
    write_jsonl(tmp_path / "p.json", pairs)  # JSONL content under a .json name
    assert read_captions(tmp_path / "weird.txt") == pairs
    assert read_captions(tmp_path / "p.json") == pairs
    assert read_captions(_jsonl(tmp_path, [])) == []
    assert read_captions(_jsonl(tmp_path, ["[]"], "e.json")) == []


def test_pretty_printed_single_object_is_reported_not_crashing(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"image": "a.png", "caption": "x"}, indent=2))
    err = _error(read_captions, path)
    assert err.line == 1 and "one whole record per line" in err.problem


def test_data_error_is_one_line_and_picklable():
    err = DataError("d.jsonl", 3, "bad\nvalue")
    assert str(err) == "d.jsonl:3: bad value" and isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.line, str(back)) == ("d.jsonl", 3, str(err))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"image": "a.png", "caption": "x"}\n{"image": "\xff"}\n')
    assert _error(read_captions, path).line == 2


@pytest.mark.parametrize("read,bad,problem", [
    (read_captions, {"image": "a.png"}, "missing field 'caption'"),
    (read_captions, {"image": 3, "caption": "x"}, "'image' must be a string"),
    (read_captions, {"image": None, "caption": "x"}, "missing field 'image'"),
    (read_preferences, {"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
    (read_preferences, {"prompt": "q", "chosen": "a", "rejected": "a"}, "identical"),
    (read_preferences, {"prompt": "<image>q", "chosen": "a", "rejected": "b"}, "no image"),
    (read_qa, {"id": "1", "image": "a.png", "question": "q", "answer": "a", "qtype": "colour"},
     "'qtype' must be one of"),
    (read_qa, {"id": "1", "image": "a.png", "question": "q", "answer": "", "qtype": "color"},
     "'answer' is empty"),
    (read_qa, {"id": "1", "question": "q", "answer": "yes", "qtype": "pope",
               "extra": {"object": "red circle"}}, "extra.strategy"),
    (read_qa, {"id": "1", "question": "q", "answer": "yes", "qtype": "pope",
               "extra": {"strategy": "random"}}, "missing field 'extra.object'"),
    (read_qa, {"id": "1", "question": "q", "answer": "a", "qtype": "count", "extra": [1]},
     "'extra' must be an object"),
])
def test_bad_captions_preferences_and_qa(tmp_path, read, bad, problem):
    path = _jsonl(tmp_path, [bad])
    err = _error(read, path)
    assert err.line == 1 and problem in err.problem


def test_preferences_and_qa_round_trip(tmp_path):
    prefs = [PreferencePair("a.png", "What colour is it?", "red", "blue"),
             PreferencePair(None, "Say hi", "Hi.", "No.")]
    items = [QAItem("q1", "a.png", "How many?", "2", "count", {"target": "circle"}),
             QAItem("q2", "a.png", "Is there a red circle in the image?", "no", "pope",
                    {"strategy": "adversarial", "object": "red circle"})]
    write_jsonl(tmp_path / "p.jsonl", prefs)
    write_jsonl(tmp_path / "q.jsonl", items)
    assert read_preferences(tmp_path / "p.jsonl") == prefs
    assert read_qa(tmp_path / "q.jsonl") == items
    assert "source" not in (tmp_path / "q.jsonl").read_text()
    marked = _jsonl(tmp_path, [{"image": "a.png", "prompt": "<image>\nWhat?", "chosen": "x",
                                "rejected": "y"}], "m.jsonl")
    assert read_preferences(marked)[0].prompt == "What?"


def test_write_is_atomic(tmp_path):
    path = tmp_path / "q.jsonl"
    write_jsonl(path, [CaptionPair("a.png", "first")])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [CaptionPair("a.png", "second"), QAItem("1", None, "q", "a", "count",
                                                                  {"bad": object()})])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]
