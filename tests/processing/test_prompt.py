"""Chat templates byte for byte, multi-turn rendering, the image splice and header stripping."""

from __future__ import annotations

import pytest

from omnivision.processing.byte_tokenizer import byte_level_tokenizer
from omnivision.processing.prompt import (
    Message,
    build_inputs,
    expand_image_tokens,
    render,
    strip_assistant_header,
)

SYSTEM = ("<|im_start|>system\nYou are Nano-Omni-VLM, created by Nexa AI. "
          "You are a helpful assistant.<|im_end|>\n")
VISION = "<|vision_start|><|image_pad|><|vision_end|>"
ASK = [Message("user", "What is in the image?", has_image=True)]


@pytest.mark.parametrize("template,expected", [
    ("omnivision", SYSTEM + "<|im_start|>user\n\n" + VISION + "What is in the image?<|im_end|>"),
    ("omnivision-v1", SYSTEM + "<|im_start|>user\nWhat is in the image?\n" + VISION + "<|im_end|>"),
    ("omnivision-ocr", SYSTEM + "<|im_start|>user\n " + VISION + "<|im_end|>"),
    ("chatml", SYSTEM + "<|im_start|>user\n\n" + VISION
     + "What is in the image?<|im_end|>\n<|im_start|>assistant\n"),
])
def test_single_turn_templates(template: str, expected: str) -> None:
    assert render(ASK, template) == expected


def test_official_prompt_literal() -> None:
    # docs/official-release.md section 0, item 4, written out in full
    assert render(ASK) == (
        "<|im_start|>system\nYou are Nano-Omni-VLM, created by Nexa AI. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\n\n<|vision_start|><|image_pad|><|vision_end|>"
        "What is in the image?<|im_end|>"
    )


def test_custom_and_missing_system_prompt() -> None:
    assert render(ASK, system_prompt="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")
    assert render(ASK, system_prompt=None).startswith("<|im_start|>user\n\n")


def test_multi_turn() -> None:
    conv = [*ASK, Message("assistant", "A cat."), Message("user", "What colour is it?")]
    assert render(conv) == (
        SYSTEM + "<|im_start|>user\n\n" + VISION + "What is in the image?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nWhat colour is it?<|im_end|>"
    )
    assert render(conv, "chatml").endswith("<|im_start|>user\nWhat colour is it?<|im_end|>\n<|im_start|>assistant\n")
    assert render(conv, "omnivision-v1").startswith(
        SYSTEM + "<|im_start|>user\nWhat is in the image?\n" + VISION + "<|im_end|>\n<|im_start|>assistant\n")
    assert render([Message("user", "hi")], "chatml") == SYSTEM + "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    two_images = [*ASK, Message("assistant", "A cat."), Message("user", "And this?", has_image=True)]
    assert render(two_images).count(VISION) == 2


def test_render_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown template"):
        render(ASK, "llava")
    with pytest.raises(ValueError, match="no messages"):
        render([])
    with pytest.raises(ValueError, match="unknown role"):
        render([Message("system", "x")])  # type: ignore[arg-type]


def test_expand_image_tokens() -> None:
    assert expand_image_tokens([1, 9, 2, 9], 9, 3) == [1, 9, 9, 9, 2, 9, 9, 9]
    assert expand_image_tokens([1, 2], 9, 81) == [1, 2]


def test_strip_assistant_header() -> None:
    assert strip_assistant_header("<|im_start|>assistant\nA cat on a mat.\n") == "A cat on a mat."
    assert strip_assistant_header("  A cat.  ") == "A cat."
    assert strip_assistant_header("assistant is here") == "assistant is here"


def test_build_inputs_with_byte_tokenizer() -> None:
    tok = byte_level_tokenizer()
    ids = build_inputs(tok, ASK, "omnivision", num_image_tokens=4)
    assert ids.count(262) == 4 and ids[0] == 257 and ids[-1] == 258
    i = ids.index(262)
    assert ids[i - 1] == 259 and ids[i + 4] == 260
    # user text that spells a special token stays literal only when asked to
    sneaky = [Message("user", "<|im_end|>", has_image=True)]
    assert build_inputs(tok, sneaky, num_image_tokens=1).count(258) == 3
    assert build_inputs(tok, sneaky, num_image_tokens=1, escape_content=True).count(258) == 2
