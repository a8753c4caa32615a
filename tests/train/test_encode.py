"""Training examples: labels cover exactly the generated spans, ids equal whole-text encoding, truncation.

Run with the byte-level fallback tokenizer and, when a local copy is found, the real Qwen2.5 one.
"""

from __future__ import annotations

import pytest

from omnivision.config import TEMPLATES
from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import Message, build_inputs, expand_image_tokens, render
from omnivision.processing.tokenizer import (
    Tokenizer,
    find_local_qwen_tokenizer,
    qwen25_from_qwen3_tokenizer_json,
)
from omnivision.train.encode import (
    EncodedExample,
    encode_caption,
    encode_conversation,
    encode_preference,
    truncate,
)
from omnivision.train.losses import IGNORE_INDEX

SYSTEM = "You are a test assistant."
N_IMG = 4
HEADER = "\n<|im_start|>assistant\n"
OFFICIAL = ("omnivision", "omnivision-v1", "omnivision-ocr")
ONE_TURN = [("user", "What is in the image?"), ("assistant", "A red cube.")]
TWO_TURNS = ONE_TURN + [("user", "And its size?"), ("assistant", "Small, about 2 cm.")]


@pytest.fixture(scope="module", params=["byte", "qwen"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "byte":
        return byte_level_tokenizer()
    path = find_local_qwen_tokenizer()
    if path is None:
        pytest.skip("no local Qwen tokenizer.json (see find_local_qwen_tokenizer)")
    return qwen25_from_qwen3_tokenizer_json(path)


def labelled_runs(tokenizer: Tokenizer, ex: EncodedExample) -> list[str]:
    """Decoded text of each maximal run of labelled positions (labels equal the ids there)."""
    runs: list[list[int]] = []
    previous = False
    for tid, label in zip(ex.input_ids, ex.labels):
        if label != IGNORE_INDEX:
            assert label == tid
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE_INDEX
    return [tokenizer.decode(run) for run in runs]


def expected_runs(template: str, answers: list[str]) -> list[str]:
    if template == "chatml":
        return [a + "<|im_end|>" for a in answers]
    return [HEADER + a + "<|im_end|>" for a in answers]


def messages_of(turns: list[tuple[str, str]], has_image: bool) -> list[Message]:
    return [Message(role, text, has_image and n == 0)  # type: ignore[arg-type]
            for n, (role, text) in enumerate(turns)]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("has_image", [True, False])
def test_labels_cover_the_generated_span(tokenizer: Tokenizer, template: str, has_image: bool) -> None:
    ex = encode_conversation(tokenizer, ONE_TURN, has_image, template, SYSTEM, N_IMG)
    assert labelled_runs(tokenizer, ex) == expected_runs(template, ["A red cube."])
    # the labelled run is the tail of the sequence except the final "\n"
    assert ex.labels[-1] == IGNORE_INDEX and tokenizer.decode(ex.input_ids[-1:]) == "\n"
    assert ex.labels[-2] == tokenizer.im_end_id


@pytest.mark.parametrize("template", TEMPLATES)
def test_multi_turn_labels_every_answer(tokenizer: Tokenizer, template: str) -> None:
    ex = encode_conversation(tokenizer, TWO_TURNS, True, template, SYSTEM, N_IMG)
    assert labelled_runs(tokenizer, ex) == expected_runs(template, ["A red cube.", "Small, about 2 cm."])


@pytest.mark.parametrize("template", TEMPLATES)
def test_im_end_closing_each_answer_is_labelled(tokenizer: Tokenizer, template: str) -> None:
    """<|im_end|> closes system, user 1, answer 1, user 2, answer 2: only the answers' are labelled,
    and the "\\n" after each labelled <|im_end|> is not."""
    ex = encode_conversation(tokenizer, TWO_TURNS, True, template, SYSTEM, N_IMG)
    im_end = tokenizer.im_end_id
    positions = [i for i, tid in enumerate(ex.input_ids) if tid == im_end]
    assert len(positions) == 5
    assert [ex.labels[i] == im_end for i in positions] == [False, False, True, False, True]
    newline = tokenizer.encode("\n")
    for i in (positions[2], positions[4]):
        assert ex.input_ids[i + 1:i + 2] == newline
        assert ex.labels[i + 1] == IGNORE_INDEX


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("turns", [ONE_TURN, TWO_TURNS], ids=["one", "two"])
@pytest.mark.parametrize("has_image", [True, False])
@pytest.mark.parametrize("system", [SYSTEM, None])
def test_ids_equal_whole_text_encoding(tokenizer: Tokenizer, template: str, turns: list[tuple[str, str]],
                                       has_image: bool, system: str | None) -> None:
    ex = encode_conversation(tokenizer, turns, has_image, template, system, N_IMG)
    messages = messages_of(turns, has_image)
    whole = tokenizer.encode(render(messages, template, system))
    assert ex.input_ids == expand_image_tokens(whole, tokenizer.image_pad_id, N_IMG)
    assert ex.input_ids == build_inputs(tokenizer, messages, template, system, N_IMG)


@pytest.mark.parametrize("template", TEMPLATES)
def test_prompt_ids_equal_the_inference_prompt(tokenizer: Tokenizer, template: str) -> None:
    """Everything before the first label is exactly what the runtime feeds the model at inference."""
    ex = encode_conversation(tokenizer, ONE_TURN, True, template, SYSTEM, N_IMG)
    first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
    prompt = build_inputs(tokenizer, messages_of(ONE_TURN[:1], True), template, SYSTEM, N_IMG)
    assert ex.input_ids[:first] == prompt


@pytest.mark.parametrize("template", OFFICIAL)
def test_segmentwise_tokenization_agrees(tokenizer: Tokenizer, template: str) -> None:
    """Tokenizing prompt, generated span and trailing "\\n" separately gives the whole-text ids:
    for the official templates every span edge sits next to a special token."""
    messages = messages_of(ONE_TURN, True)
    prompt = render(messages[:1], template, SYSTEM)
    span = HEADER + ONE_TURN[1][1] + "<|im_end|>"
    assert render(messages, template, SYSTEM) == prompt + span + "\n"
    pieces = tokenizer.encode(prompt) + tokenizer.encode(span) + tokenizer.encode("\n")
    ex = encode_conversation(tokenizer, ONE_TURN, True, template, SYSTEM, N_IMG)
    assert ex.input_ids == expand_image_tokens(pieces, tokenizer.image_pad_id, N_IMG)


@pytest.mark.parametrize("template", TEMPLATES)
def test_image_block_expanded_and_unlabelled(tokenizer: Tokenizer, template: str) -> None:
    ex = encode_conversation(tokenizer, TWO_TURNS, True, template, SYSTEM, N_IMG)
    pad = tokenizer.image_pad_id
    slots = [i for i, tid in enumerate(ex.input_ids) if tid == pad]
    assert ex.num_images == 1
    assert len(slots) == N_IMG and slots == list(range(slots[0], slots[0] + N_IMG))
    assert all(ex.labels[i] == IGNORE_INDEX for i in slots)
    assert ex.input_ids[slots[0] - 1] == tokenizer.vision_start_id
    assert ex.input_ids[slots[-1] + 1] == tokenizer.vision_end_id
    assert ex.image_end == slots[-1] + 2
    text_only = encode_conversation(tokenizer, TWO_TURNS, False, template, SYSTEM, N_IMG)
    assert text_only.num_images == 0 and text_only.image_end == 0
    assert pad not in text_only.input_ids


@pytest.mark.parametrize("template", TEMPLATES)
def test_encode_caption(tokenizer: Tokenizer, template: str) -> None:
    ex = encode_caption(tokenizer, "A blue sphere.", template, SYSTEM, N_IMG)
    assert ex.num_images == 1
    assert labelled_runs(tokenizer, ex) == expected_runs(template, ["A blue sphere."])
    same = encode_conversation(tokenizer, [("user", "Describe the image."), ("assistant", "A blue sphere.")],
                               True, template, SYSTEM, N_IMG)
    assert ex == same


@pytest.mark.parametrize("template", TEMPLATES)
def test_encode_preference_shares_the_prompt(tokenizer: Tokenizer, template: str) -> None:
    chosen, rejected = encode_preference(tokenizer, "What is in the image?", "A red cube.",
                                         "A green pyramid on a table.", True, template, SYSTEM, N_IMG)
    prompt = build_inputs(tokenizer, messages_of(ONE_TURN[:1], True), template, SYSTEM, N_IMG)
    n = len(prompt)
    assert chosen.input_ids[:n] == rejected.input_ids[:n] == prompt
    assert all(label == IGNORE_INDEX for label in chosen.labels[:n] + rejected.labels[:n])
    assert labelled_runs(tokenizer, chosen) == expected_runs(template, ["A red cube."])
    assert labelled_runs(tokenizer, rejected) == expected_runs(template, ["A green pyramid on a table."])


def test_chatml_answer_starting_with_newline(tokenizer: Tokenizer) -> None:
    """The header's "\\n" and the answer's leading "\\n" may merge into one token (Qwen's "\\n\\n"):
    that token is labelled, and a preference pair can then no longer share its prompt."""
    ex = encode_conversation(tokenizer, [("user", "Q"), ("assistant", "\nA")], False, "chatml", SYSTEM, N_IMG)
    assert ex.input_ids == build_inputs(tokenizer, [Message("user", "Q"), Message("assistant", "\nA")],
                                        "chatml", SYSTEM, N_IMG)
    merged = len(tokenizer.encode("assistant\n\nA")) < len(tokenizer.encode("assistant\n")) + 2
    assert labelled_runs(tokenizer, ex) == ["\n\nA<|im_end|>" if merged else "\nA<|im_end|>"]
    if merged:
        with pytest.raises(ValueError, match="different prompt ids"):
            encode_preference(tokenizer, "Q", "\nA", "B", False, "chatml", SYSTEM, N_IMG)
    for template in OFFICIAL:  # the official templates are unaffected
        ex = encode_conversation(tokenizer, [("user", "Q"), ("assistant", "\nA")], False, template,
                                 SYSTEM, N_IMG)
        assert labelled_runs(tokenizer, ex) == [HEADER + "\nA<|im_end|>"]


# --- truncation ----------------------------------------------------------------------------------

def test_truncate() -> None:
    tok = byte_level_tokenizer()
    ex = encode_conversation(tok, TWO_TURNS, True, "omnivision", SYSTEM, N_IMG)
    assert truncate(ex, len(ex)) is ex
    cut = truncate(ex, len(ex) - 5)
    assert cut.input_ids == ex.input_ids[:-5] and cut.labels == ex.labels[:-5]
    assert cut.num_images == 1 and cut.image_end == ex.image_end
    for bad in (ex.image_end - 1, ex.image_end - 3):
        with pytest.raises(ValueError, match="image block"):
            truncate(ex, bad)
    first = next(i for i, label in enumerate(ex.labels) if label != IGNORE_INDEX)
    with pytest.raises(ValueError, match="no labelled token"):
        truncate(ex, first)  # only the prompt survives
    assert truncate(ex, first + 1).num_label_tokens == 1
    with pytest.raises(ValueError, match="positive"):
        truncate(ex, 0)


def test_truncate_text_first_template_keeps_image_whole() -> None:
    """omnivision-v1 puts the text before the image: a cut before the image block is refused too."""
    tok = byte_level_tokenizer()
    ex = encode_conversation(tok, ONE_TURN, True, "omnivision-v1", SYSTEM, N_IMG)
    with pytest.raises(ValueError, match="image block"):
        truncate(ex, 10)


# --- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("turns,match", [
    ([], "no turns"),
    ([("assistant", "Hi")], "role 'assistant'"),
    ([("user", "Hi")], "last turn"),
    ([("user", "a"), ("user", "b")], "role 'user'"),
    ([("What is it?", "A cube.")], "role"),
    ([("user", "a <|image_pad|> b"), ("assistant", "x")], "special token"),
    ([("user", "a"), ("assistant", "x<|im_end|>y")], "special token"),
])
def test_bad_conversations_are_refused(turns: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_conversation(byte_level_tokenizer(), turns, True, "omnivision", SYSTEM, N_IMG)


def test_bad_arguments_are_refused() -> None:
    tok = byte_level_tokenizer()
    with pytest.raises(ValueError, match="num_image_tokens"):
        encode_conversation(tok, ONE_TURN, True, "omnivision", SYSTEM, 0)
    with pytest.raises(ValueError, match="unknown template"):
        encode_conversation(tok, ONE_TURN, True, "llava", SYSTEM, N_IMG)
    with pytest.raises(ValueError, match="system prompt"):
        encode_conversation(tok, ONE_TURN, True, "omnivision", "<|im_start|>", N_IMG)
    with pytest.raises(ValueError, match="labels"):
        EncodedExample([1, 2], [1], 0)
