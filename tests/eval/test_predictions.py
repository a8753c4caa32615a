"""The predictions file: durable appends, a killed run's partial last line dropped and redone,
real damage reported with its line, shard names, and the merge into sample order."""

from __future__ import annotations

import json

import pytest

from omnivision.json_files import DataError
from omnivision.eval import predictions


def rec(i: str, **extra) -> dict:
    return {"id": i, "prediction": f"answer {i}", **extra}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_appended_batches_are_readable_before_close(tmp_path):
    path = tmp_path / "t" / "predictions.jsonl"
    with predictions.Appender(path) as out:
        assert out.records == []
        out.append([rec("a"), rec("b")])
        # flushed (and fsynced) per batch: another reader sees them while the file is open
        assert predictions.read(path) == [rec("a"), rec("b")]
        out.append([rec("c", note="ünïcode")])
    assert lines(path) == [rec("a"), rec("b"), rec("c", note="ünïcode")]
    assert predictions.Appender(path).records == lines(path)


def test_a_killed_runs_partial_last_line_is_dropped_and_rewritten(tmp_path, capsys):
    path = tmp_path / "predictions.jsonl"
    whole = "".join(predictions.encode(r) for r in (rec("0"), rec("1")))
    partial = predictions.encode(rec("2"))[:-9].encode()
    path.write_bytes(whole.encode() + partial)
    assert [r["id"] for r in predictions.read(path)] == ["0", "1"]
    with predictions.Appender(path) as out:
        assert [r["id"] for r in out.records] == ["0", "1"]
        out.append([rec("2")])
    assert lines(path) == [rec("0"), rec("1"), rec("2")]
    assert "incomplete last line" in capsys.readouterr().err


def test_a_partial_multibyte_character_at_the_end_is_dropped_too(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(predictions.encode(rec("0")).encode() + '{"id": "1", "prediction": "é'.encode()[:-1])
    assert predictions.read(path) == [rec("0")]


def test_a_bad_line_followed_by_records_is_damage(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(predictions.encode(rec("0")) + "{not json\n" + predictions.encode(rec("2")))
    with pytest.raises(DataError, match=r"predictions.jsonl:2: not a JSON record"):
        predictions.read(path)
    # a bad last line, even with its newline, is only a lost sample
    path.write_text(predictions.encode(rec("0")) + "{not json\n\n")
    assert predictions.read(path) == [rec("0")]


def test_a_record_without_id_is_refused(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(predictions.encode(rec("0")) + '{"prediction": "x"}\n')
    with pytest.raises(DataError, match=r":2: prediction record without an 'id'"):
        predictions.read(path)


def test_shard_names(tmp_path):
    main = tmp_path / "predictions.jsonl"
    assert predictions.shard_path(main, 3).name == "predictions.rank3.jsonl"
    for r in (1, 0, 12):
        predictions.shard_path(main, r).write_text("")
    (tmp_path / "scored.jsonl").write_text("")
    assert [p.name for p in predictions.shard_paths(main)] == [
        "predictions.rank0.jsonl", "predictions.rank1.jsonl", "predictions.rank12.jsonl"]


def test_merge_puts_records_in_sample_order_and_removes_the_shards(tmp_path):
    main = tmp_path / "predictions.jsonl"
    main.write_text(predictions.encode(rec("old")) + predictions.encode(rec("b", source="main")))
    s0, s1 = predictions.shard_path(main, 0), predictions.shard_path(main, 1)
    s0.write_text(predictions.encode(rec("c")) + predictions.encode(rec("a")))
    # a copy of "b" left in a shard (killed between merge and removal): the main file's wins
    s1.write_text(predictions.encode(rec("b", source="shard")) + predictions.encode(rec("d"))[:-3])
    got = predictions.merge(main, [s0, s1], ["a", "b", "c", "d"])
    # "d" was never completed, so it is missing; "old" (not in this run) is kept at the end
    assert [r["id"] for r in got] == ["a", "b", "c"]
    assert lines(main) == [rec("a"), rec("b", source="main"), rec("c"), rec("old")]
    assert not s0.exists() and not s1.exists()


def test_blank_lines_after_a_damaged_last_line_are_cut_off_with_it(tmp_path):
    # a killed run left record 2 without its closing brace, then a blank line: the file must be cut
    # where the damaged line starts (byte 11), not one byte later, or the next record is glued to
    # the leftover "{" and lost
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(b'{"id":"1"}\n{"id":"2"\n\n')
    with predictions.Appender(path) as out:
        assert [r["id"] for r in out.records] == ["1"]
        out.append([rec("2")])
    assert path.read_bytes() == b'{"id":"1"}\n' + predictions.encode(rec("2")).encode()
    assert [r["id"] for r in predictions.read(path)] == ["1", "2"]
