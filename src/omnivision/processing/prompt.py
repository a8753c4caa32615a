"""Chat prompts: the official templates byte for byte, multi-turn rendering, the image-token splice.

Templates (docs/official-release.md section 3.1); `S` is the system turn
`<|im_start|>system\\n{system_prompt}<|im_end|>\\n` and `V` the vision block
`<|vision_start|><|image_pad|><|vision_end|>`:

- `omnivision` (official, image first): `S<|im_start|>user\\n\\nV{prompt}<|im_end|>`
- `omnivision-v1` (checkpoints before 2024-11-22, text first): `S<|im_start|>user\\n{prompt}\\nV<|im_end|>`
- `omnivision-ocr` (the CLI's; the prompt is ignored): `S<|im_start|>user\\n V<|im_end|>`
- `chatml`: like `omnivision`, then `\\n<|im_start|>assistant\\n`

None of the official templates adds the assistant header: the model writes it and
`strip_assistant_header` removes it from the answer, as Nexa's SDK does.

Multi-turn joining (our choice; the official runtime is single-turn): every turn is followed by
`\\n` except a final user turn, so a single-turn prompt is exactly the official one and a longer
conversation stays well-formed ChatML. A finished assistant turn is
`<|im_start|>assistant\\n{answer}<|im_end|>\\n`. A user turn without an image has no vision block,
`<|im_start|>user\\n{prompt}<|im_end|>`, in every template. `system_prompt=None` omits the system turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from omnivision.config import TEMPLATES, ProcessingConfig

if TYPE_CHECKING:
    from omnivision.processing.tokenizer import Tokenizer

DEFAULT_SYSTEM_PROMPT = ProcessingConfig().system_prompt
VISION_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"
ASSISTANT_HEADER = "<|im_start|>assistant"


@dataclass(frozen=True)
class Message:
    """One chat turn. `has_image` places the image block in a user turn."""

    role: Literal["user", "assistant"]
    content: str
    has_image: bool = False


def _user_turn(template: str, text: str, has_image: bool) -> list[tuple[str, bool]]:
    """The user turn as (piece, is_template) segments; user text is the only non-template piece."""
    if not has_image:
        return [("<|im_start|>user\n", True), (text, False), ("<|im_end|>", True)]
    if template == "omnivision-v1":
        return [("<|im_start|>user\n", True), (text, False), ("\n" + VISION_BLOCK + "<|im_end|>", True)]
    if template == "omnivision-ocr":
        return [("<|im_start|>user\n " + VISION_BLOCK + "<|im_end|>", True)]
    return [("<|im_start|>user\n\n" + VISION_BLOCK, True), (text, False), ("<|im_end|>", True)]


def render_segments(messages: Sequence[Message], template: str = "omnivision",
                    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[tuple[str, bool]]:
    """The prompt as (piece, is_template) segments; `render` joins them."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {TEMPLATES}")
    if not messages:
        raise ValueError("no messages to render")
    out: list[tuple[str, bool]] = []
    if system_prompt is not None:
        out += [("<|im_start|>system\n", True), (system_prompt, False), ("<|im_end|>\n", True)]
    for n, m in enumerate(messages):
        last = n == len(messages) - 1
        if m.role == "user":
            out += _user_turn(template, m.content, m.has_image)
            if not last:
                out.append(("\n", True))
        elif m.role == "assistant":
            if m.has_image:
                raise ValueError("an assistant turn cannot carry an image")
            out += [("<|im_start|>assistant\n", True), (m.content, False), ("<|im_end|>\n", True)]
        else:
            raise ValueError(f"unknown role {m.role!r}; use 'user' or 'assistant'")
    if template == "chatml" and messages[-1].role == "user":
        out.append(("\n" + ASSISTANT_HEADER + "\n", True))
    return [(s, t) for s, t in out if s]


def render(messages: Sequence[Message], template: str = "omnivision",
           system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The prompt text for a conversation (see the module docstring for the exact forms)."""
    return "".join(s for s, _ in render_segments(messages, template, system_prompt))


def expand_image_tokens(ids: Sequence[int], image_pad_id: int, n: int) -> list[int]:
    """Repeat every `image_pad_id` `n` times: the model swaps each copy for one image embedding.

    The official runtime splices the `n` embeddings in place of the single token instead; the
    resulting sequence of positions is the same.
    """
    out: list[int] = []
    for i in ids:
        if i == image_pad_id:
            out.extend([image_pad_id] * n)
        else:
            out.append(i)
    return out


def strip_assistant_header(text: str) -> str:
    """Remove a leading `<|im_start|>assistant` and surrounding whitespace from a decoded answer.

    Decode with special tokens kept, otherwise the header has already lost its marker.
    """
    text = text.lstrip()
    if text.startswith(ASSISTANT_HEADER):
        text = text[len(ASSISTANT_HEADER):]
    return text.strip()


def build_inputs(tokenizer: Tokenizer, messages: Sequence[Message], template: str = "omnivision",
                 system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, num_image_tokens: int = 81,
                 *, escape_content: bool = False) -> list[int]:
    """Token ids for a conversation, each image block expanded to `num_image_tokens` pad ids.

    By default the whole prompt is tokenized at once with special tokens parsed everywhere, like the
    official runtime. `escape_content=True` keeps special-token text inside system/user/assistant
    content literal (safer for untrusted input); ids can then differ at content boundaries.
    """
    if not escape_content:
        ids = tokenizer.encode(render(messages, template, system_prompt), allow_special=True)
    else:
        ids = []
        for piece, is_template in render_segments(messages, template, system_prompt):
            ids += tokenizer.encode(piece, allow_special=is_template)
    return expand_image_tokens(ids, tokenizer.image_pad_id, num_image_tokens)
