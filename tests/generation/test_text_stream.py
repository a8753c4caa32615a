"""TextStream: ids to answer text with the byte-level tokenizer (ids 0..255 are bytes, 257 is
`<|im_start|>`): assistant-header removal, whitespace stripping, stop strings across token
boundaries, UTF-8 characters split over tokens, `token_ids`, and streamed == non-streamed text."""

from __future__ import annotations

import pytest

from omnivision.generation.text_stream import TextStream
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import strip_assistant_header

TOK = byte_level_tokenizer()
IM_START = 257
HEADER_IDS = [IM_START, *TOK.encode("assistant\n")]


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def pieces(token_ids, stop=()) -> tuple[list[str], TextStream]:
    stream = TextStream(iter(token_ids), TOK, stop)
    return list(stream), stream


def reference(token_ids, stop=()) -> str:
    """The whole answer decoded at once: header stripped, cut at the earliest stop, stripped."""
    text = strip_assistant_header(TOK.decode(token_ids))
    cuts = [text.find(s) for s in stop if s and s in text]
    if cuts:
        text = text[:min(cuts)]
    return text.strip()


class Tracked:
    """A token generator that records whether it was closed, and how far it was consumed."""

    def __init__(self, token_ids):
        self.token_ids = list(token_ids)
        self.closed = False
        self.yielded = 0

    def __iter__(self):
        return self._gen()

    def _gen(self):
        try:
            for t in self.token_ids:
                self.yielded += 1
                yield t
        finally:
            self.closed = True


def test_byte_tokenizer_ids_are_as_assumed():
    assert TOK.im_start_id == IM_START
    assert ids("ab") == [97, 98]
    assert TOK.decode(HEADER_IDS) == "<|im_start|>assistant\n"


def test_header_stripped_and_nothing_emitted_while_it_could_still_be_the_header():
    token_ids = HEADER_IDS + ids("Hello")
    out, stream = pieces(token_ids)
    assert "".join(out) == "Hello"
    assert not any("<|im_start|>" in p or "assistant" in p for p in out)
    assert stream.token_ids == token_ids


def test_header_stripped_when_decoded_in_one_piece_too():
    # a multi-token piece: the header and the first word come out of one push
    assert "".join(TextStream(iter(HEADER_IDS + ids("Hi there")), TOK)) == "Hi there"


def test_header_with_surrounding_whitespace():
    token_ids = ids("  \n") + HEADER_IDS + ids("\n\n   Answer  \n ")
    assert "".join(pieces(token_ids)[0]) == "Answer"


@pytest.mark.parametrize("text", [
    "<|im_start|>user wants this",  # starts with the marker, then other text
    "<|im_start|>assist",  # an unfinished header at the end of the answer
    "<|im_start|>",  # the bare marker
    "assistant: hello",  # the header's word without the marker
    "assist",
])
def test_text_that_only_starts_like_the_header_is_kept(text):
    out, _ = pieces(ids(text))
    assert "".join(out) == text


def test_header_removed_only_once():
    # a second header is the model's text, not the one it writes before every answer
    out, _ = pieces(HEADER_IDS + HEADER_IDS + ids("x"))
    assert "".join(out) == "<|im_start|>assistant\nx"


def test_header_only_answer_is_empty():
    out, stream = pieces(HEADER_IDS)
    assert out == []
    assert stream.token_ids == HEADER_IDS


def test_leading_and_trailing_whitespace_stripped_inner_kept():
    out, _ = pieces(ids(" \n\t Hello,  world \n\n"))
    assert "".join(out) == "Hello,  world"
    assert out[0] == "H"  # no piece starts with the dropped leading whitespace
    # trailing whitespace is held back until more text follows, so no piece ends the answer with it
    assert not out[-1].endswith((" ", "\n"))


def test_stop_string_across_token_boundaries_cuts_exactly_and_closes_generator():
    src = Tracked(ids("The answer is 42.\nUser: more") + ids(" and more text"))
    stream = TextStream(iter(src), TOK, ["\nUser:"])
    out = list(stream)
    assert "".join(out) == "The answer is 42."
    assert stream.stopped_by == "\nUser:"
    assert src.closed
    # generation stopped right after the stop string's last token
    consumed = len(ids("The answer is 42.\nUser:"))
    assert src.yielded == consumed
    assert stream.token_ids == src.token_ids[:consumed]
    # nothing of the stop string was ever emitted, not even its first characters
    assert not any("\n" in p or "U" in p for p in out)


def test_stop_string_inside_one_multi_character_piece():
    # "é" arrives as one piece after its second byte; the stop string is inside it
    stream = TextStream(iter(ids("café au lait")), TOK, ["é"])
    assert "".join(stream) == "caf"
    assert stream.stopped_by == "é"


def test_earliest_stop_string_wins_when_several_complete_in_one_piece():
    # `<|im_end|>` (258) decodes to ten characters at once: both stop strings complete together,
    # and the answer must end before the one that starts first, whatever the order given
    for stop in (["im_end", "<|"], ["<|", "im_end"]):
        stream = TextStream(iter(ids("ok ") + [258] + ids(" tail")), TOK, stop)
        assert "".join(stream) == "ok"
        assert stream.stopped_by == "<|"


def test_earliest_stop_string_wins_after_the_header_hold():
    # "<|im_start|>" is held (it could be the header); the next token releases
    # "<|im_start|>X" at once, holding the stop strings "X" and "im_"
    stream = TextStream(iter([IM_START] + ids("X more")), TOK, ["X", "im_"])
    assert "".join(stream) == "<|"
    assert stream.stopped_by == "im_"


def test_stop_string_at_the_very_start_gives_empty_answer():
    src = Tracked(HEADER_IDS + ids("STOP and more"))
    stream = TextStream(iter(src), TOK, ["STOP"])
    assert list(stream) == []
    assert stream.stopped_by == "STOP"
    assert src.closed


def test_prefix_of_stop_string_that_never_completes_is_emitted_at_the_end():
    out, stream = pieces(ids("Hello <|im"), stop=["<|im_end|>x"])
    assert "".join(out) == "Hello <|im"
    assert stream.stopped_by is None
    # it was held back while it could still become the stop string
    assert out[-1].endswith("<|im")

    out, stream = pieces(ids("abcab"), stop=["abd"])
    assert "".join(out) == "abcab"
    assert stream.stopped_by is None


def test_held_prefix_released_once_it_diverges():
    out, _ = pieces(ids("a<|iX b"), stop=["<|im"])
    assert "".join(out) == "a<|iX b"
    assert "<|iX" in out  # released in one piece once it could no longer become the stop string


def test_no_stop_means_generator_runs_to_its_end():
    src = Tracked(ids("short"))
    stream = TextStream(iter(src), TOK, ["zzz"])
    assert "".join(stream) == "short"
    assert stream.stopped_by is None
    assert src.yielded == len(src.token_ids) and src.closed


@pytest.mark.parametrize("text", ["é", "naïve café", "日本語のテキスト", "emoji 😀👍🏽 done", "Ωmega"])
def test_multibyte_characters_split_over_tokens_come_out_whole(text):
    token_ids = ids(text)
    assert len(token_ids) > len(text)  # really split: several byte tokens per character
    out, stream = pieces(token_ids)
    assert "".join(out) == text.strip()
    assert all("\ufffd" not in p for p in out)
    assert stream.token_ids == token_ids


def test_invalid_utf8_comes_out_as_replacement_characters():
    token_ids = ids("ab") + [0xFF] + ids("cd")
    out, _ = pieces(token_ids)
    assert "".join(out) == "ab\ufffdcd"


def test_token_ids_records_every_consumed_id_including_header_and_whitespace():
    token_ids = HEADER_IDS + ids("  x  ") + [0xC3]  # ends on half a character
    out, stream = pieces(token_ids)
    assert stream.token_ids == token_ids
    assert "".join(out) == "x  \ufffd"


def test_empty_stop_strings_are_ignored():
    out, stream = pieces(ids("text"), stop=["", "zz"])
    assert "".join(out) == "text"
    assert stream.stopped_by is None


@pytest.mark.parametrize("token_ids,stop", [
    (HEADER_IDS + ids("A plain answer."), ()),
    (ids("  no header, trailing space   "), ()),
    (HEADER_IDS + ids("Cats and dogs.\n\nQ: next"), ("\n\nQ:",)),
    (HEADER_IDS + ids("mixed é 😀 text END rest"), ("END", "rest")),
    (ids("<|im_start|>user hi"), ("zz",)),
    (ids("x <|vision_start|> y"), ("<|vision",)),
    (ids("ababababc"), ("abc",)),
    (ids("aaa b"), ("aab", " ")),
    (HEADER_IDS + [258, 97], ()),
    (HEADER_IDS + ids(" \n") + HEADER_IDS + ids("again"), ()),
])
def test_joined_pieces_equal_the_answer_decoded_at_once(token_ids, stop):
    joined = "".join(TextStream(iter(token_ids), TOK, stop))
    assert joined == reference(token_ids, stop)


@pytest.mark.parametrize("limit, stop, expected", [
    (None, (), "stop"),  # the generator ended (a stop token)
    (len(ids("hello world")), (), "length"),  # it ran into the token limit
    (len(ids("hello world")), ("world",), "stop"),  # a stop string completed on the last token
    (len(ids("hello world")) + 5, (), "stop"),
])
def test_finish_reason(limit, stop, expected):
    stream = TextStream(iter(ids("hello world")), TOK, stop, limit=limit)
    list(stream)
    assert stream.finish_reason == expected


def test_interrupt_ends_the_answer_releases_its_text_and_closes_the_generator():
    tokens = Tracked(ids("one two three four"))
    calls = []

    def interrupt():
        calls.append(len(calls))
        return "cancelled" if len(calls) == len("one two") else None

    stream = TextStream(iter(tokens), TOK, interrupt=interrupt, limit=100)
    assert "".join(stream) == "one two"
    assert stream.finish_reason == "cancelled" and tokens.closed
    assert stream.token_ids == ids("one two")
