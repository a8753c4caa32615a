"""Conversations -> training ids and labels, through the model's own chat template.

Training and inference render text with the same function (`processing.prompt.render`), so a trained
model sees exactly the prompts the runtime builds. Owns `EncodedExample`, the encoders for the three
stages (`encode_conversation`, `encode_caption` for stage-1 alignment, `encode_preference` for DPO)
and `truncate`. Knows nothing of tensors, images or batches (`train/collate.py` does).

What is labelled. `labels` is aligned with `input_ids` (the shift happens in `train/losses.py`) and
holds the id itself on exactly the text the model must generate after each assistant turn's
inference prompt, and `IGNORE_INDEX` everywhere else:

- `omnivision`, `omnivision-v1`, `omnivision-ocr`: the official runtime's prompt ends at the user's
  `<|im_end|>`, so the model itself writes `\\n<|im_start|>assistant\\n{answer}<|im_end|>`; that
  whole span is labelled: the separator newline, the header, the answer, the closing `<|im_end|>`.
- `chatml`: the prompt ends with `<|im_start|>assistant\\n`, so only `{answer}<|im_end|>` is labelled.

Every assistant turn of a multi-turn conversation is labelled this way. The `\\n` that follows an
assistant `<|im_end|>` is in `input_ids` (it is part of the rendered conversation) but is NOT
labelled: generation stops at `<|im_end|>`, so the model never has to produce it.

Mechanics. The label span of assistant turn k is defined literally: from the end of
`render(messages[:k])` (the inference prompt) to the end of `render(messages[:k+1])` minus that final
`\\n`. The whole conversation is tokenized once, special tokens parsed, exactly as
`processing.prompt.build_inputs` does, so `input_ids` always equal the ids of the rendered text; a
token is labelled when its character span overlaps a label span. For the official templates the span
edges sit next to special tokens, where byte-level BPE never merges across, so tokenizing per segment
would give the same ids. For `chatml` the start edge is inside `assistant\\n{answer}`: an answer that
begins with a line break merges with the header's `\\n` (Qwen has a `\\n\\n` token); that token is
labelled, and the ids of the prompt then differ from the inference prompt's by that one token.

Special-token text (`<|im_end|>`, `<|image_pad|>`, ...) inside system, user or assistant content is
refused: the whole-text tokenization would turn it into control tokens and break the structure.

Each image placeholder is expanded to `num_image_tokens` copies of the image pad id
(`expand_image_tokens`), labelled `IGNORE_INDEX`. At most one image per conversation, in the first
user turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omnivision.processing.prompt import Message, expand_image_tokens, render
from omnivision.processing.tokenizer import Tokenizer
from omnivision.train.losses import IGNORE_INDEX

ROLES = ("user", "assistant")


@dataclass
class EncodedExample:
    """One training sequence: ids, aligned labels, and how many images its placeholders stand for."""

    input_ids: list[int]
    labels: list[int]
    """Same length as `input_ids`: the id where the model must produce it, `IGNORE_INDEX` elsewhere."""
    num_images: int
    image_end: int = 0
    """Index one past the last image block (its `<|vision_end|>`), 0 without an image; `truncate`
    never cuts before it."""

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"{len(self.input_ids)} input ids but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_label_tokens(self) -> int:
        """Tokens that count in the loss (position 0 never does: nothing predicts it)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _messages(turns: Sequence[tuple[str, str]], has_image: bool) -> list[Message]:
    """(role, content) pairs alternating user/assistant and ending with an answer -> Messages."""
    if not turns:
        raise ValueError("no turns to encode")
    messages = []
    for n, turn in enumerate(turns):
        if len(turn) != 2:
            raise ValueError(f"turn {n} is {turn!r}; expected a (role, content) pair")
        role, content = turn
        expected = ROLES[n % 2]
        if role != expected:
            raise ValueError(f"turn {n} has role {role!r}; turns are (role, content) pairs that "
                             f"alternate {ROLES[0]!r}/{ROLES[1]!r}, starting with {ROLES[0]!r}")
        if not isinstance(content, str):
            raise ValueError(f"turn {n} content is {type(content).__name__}, not str")
        messages.append(Message(role, content, has_image=has_image and n == 0))
    if messages[-1].role != "assistant":
        raise ValueError("the last turn must be an assistant answer: a final user turn teaches nothing")
    return messages


def _refuse_special_text(tokenizer: Tokenizer, messages: Sequence[Message],
                         system_prompt: str | None) -> None:
    """Raise if any content holds the text of a special token (see the module docstring)."""
    specials = [t.content for t in tokenizer.backend.get_added_tokens_decoder().values() if t.special]
    contents = [("system prompt", system_prompt or "")]
    contents += [(f"turn {n} ({m.role})", m.content) for n, m in enumerate(messages)]
    for where, text in contents:
        for token in specials:
            if token in text:
                raise ValueError(f"{where} contains the special token text {token!r}, which would be "
                                 "tokenized as a control token; remove or escape it")


def _label_spans(messages: Sequence[Message], template: str, system_prompt: str | None,
                 text: str) -> list[tuple[int, int]]:
    """Character ranges [start, end) of `text` that the model must generate (module docstring)."""
    spans = []
    for k, m in enumerate(messages):
        if m.role != "assistant":
            continue
        prompt = render(messages[:k], template, system_prompt)
        turn = render(messages[:k + 1], template, system_prompt)
        if not (text.startswith(turn) and turn.startswith(prompt) and turn.endswith("<|im_end|>\n")):
            raise RuntimeError(f"template {template!r} does not render conversations as extensions of "
                               "their prompts; the label spans cannot be placed")
        spans.append((len(prompt), len(turn) - 1))  # the final "\n" is not generated
    return spans


def encode_conversation(tokenizer: Tokenizer, turns: Sequence[tuple[str, str]], has_image: bool,
                        template: str, system_prompt: str | None, num_image_tokens: int) -> EncodedExample:
    """Ids and labels for a conversation of (role, content) turns alternating "user"/"assistant".

    With `has_image` the image block goes in the first user turn and is expanded to
    `num_image_tokens` pad ids. `system_prompt=None` omits the system turn. The labels follow the
    module docstring; `input_ids` equal `build_inputs` of the same messages.
    """
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be positive, got {num_image_tokens}")
    messages = _messages(turns, has_image)
    _refuse_special_text(tokenizer, messages, system_prompt)
    text = render(messages, template, system_prompt)
    spans = _label_spans(messages, template, system_prompt, text)

    encoding = tokenizer.backend.encode(text, add_special_tokens=False)  # = tokenizer.encode(text)
    ids: list[int] = encoding.ids
    labels = [tid if any(s < end and e > start for start, end in spans) else IGNORE_INDEX
              for tid, (s, e) in zip(ids, encoding.offsets)]

    pad = tokenizer.image_pad_id
    num_images = ids.count(pad)
    if num_images != int(has_image):
        raise RuntimeError(f"template {template!r} rendered {num_images} image blocks for "
                           f"has_image={has_image}")
    input_ids = expand_image_tokens(ids, pad, num_image_tokens)
    expanded_labels: list[int] = []
    for tid, label in zip(ids, labels):
        expanded_labels.extend([IGNORE_INDEX] * num_image_tokens if tid == pad else [label])

    image_end = 0
    if num_images:
        image_end = max(i for i, tid in enumerate(input_ids) if tid == pad) + 1
        if image_end < len(input_ids) and input_ids[image_end] == tokenizer.token_to_id("<|vision_end|>"):
            image_end += 1
    return EncodedExample(input_ids, expanded_labels, num_images, image_end)


def encode_caption(tokenizer: Tokenizer, caption: str, template: str, system_prompt: str | None,
                   num_image_tokens: int, prompt: str = "Describe the image.") -> EncodedExample:
    """Stage-1 alignment example: one image, `prompt` as the user turn, `caption` as the answer."""
    return encode_conversation(tokenizer, [("user", prompt), ("assistant", caption)], True,
                               template, system_prompt, num_image_tokens)


def _prompt_len(example: EncodedExample) -> int:
    """Index of the first labelled token."""
    return next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example))


def encode_preference(tokenizer: Tokenizer, prompt: str, chosen: str, rejected: str, has_image: bool,
                      template: str, system_prompt: str | None,
                      num_image_tokens: int) -> tuple[EncodedExample, EncodedExample]:
    """A DPO pair: the same single-turn prompt answered with `chosen` and with `rejected`.

    Both examples start with the same prompt ids (checked); only the answers differ. Raises
    ValueError where they cannot (`chatml` with exactly one answer starting with a line break).
    """
    pair = tuple(encode_conversation(tokenizer, [("user", prompt), ("assistant", answer)], has_image,
                                     template, system_prompt, num_image_tokens)
                 for answer in (chosen, rejected))
    n = _prompt_len(pair[0])
    if _prompt_len(pair[1]) != n or pair[0].input_ids[:n] != pair[1].input_ids[:n]:
        raise ValueError("chosen and rejected answers tokenize with different prompt ids (an answer "
                         "starting with a line break merges with the chatml header); strip it")
    return pair[0], pair[1]


def truncate(example: EncodedExample, max_len: int) -> EncodedExample:
    """Keep the first `max_len` tokens (returned unchanged when it already fits).

    Raises ValueError instead of cutting into or before the end of the image block (the model
    needs every image embedding slot) or of leaving no labelled token.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be positive, got {max_len}")
    if len(example) <= max_len:
        return example
    if example.image_end > max_len:
        raise ValueError(f"cannot truncate a {len(example)}-token example to {max_len} tokens: its image "
                         f"block ends at token {example.image_end}; raise max_len or drop the example")
    out = EncodedExample(example.input_ids[:max_len], example.labels[:max_len], example.num_images,
                         example.image_end)
    if out.num_label_tokens == 0:
        raise ValueError(f"truncating to {max_len} tokens leaves no labelled token (the prompt alone is "
                         f"{_prompt_len(example)} tokens); raise max_len or drop the example")
    return out
