"""Teachers for minimal-edit DPO: given a prompt and the model's answer, return the smallest
correction that makes the answer right (or the answer unchanged when it is already right).

- `EndpointTeacher`: any OpenAI-compatible chat-completions endpoint (through
  `omnivision.chat_client.ChatClient`: timeout, bounded retries with backoff, key from an environment
  variable), with the minimal-edit instruction below and a thread pool for concurrency.
- `OracleTeacher`: knows the ground-truth answer (procedural data) and returns it when the model's
  answer is wrong by the generated data's rule (`omnivision.data.answer_rule`, the rule the shapes
  scorers use), which is the minimal edit for short answers; a right answer comes back unchanged.

A teacher returns `None` for an item it could not correct (after its retries); such items are
dropped and counted by the caller.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, Sequence

from omnivision.chat_client import ChatClient, EndpointError, user_message
from omnivision.data.answer_rule import is_correct

MINIMAL_EDIT_INSTRUCTION = (
    "You correct answers about images with the smallest possible edit.\n"
    "You get a question and an answer written by a small model. If the answer is correct, repeat it "
    "exactly. If it is wrong, change only the words that make it wrong and keep everything else "
    "(wording, length, style, punctuation) as it is. Do not add explanations, do not add new "
    "information that the question does not ask for, and do not rephrase correct parts.\n"
    "Reply with the corrected answer only."
)
"""The instruction sent as the system message to an endpoint teacher."""


@dataclass
class TeacherItem:
    prompt: str
    answer: str
    image_url: str | None = None
    """A data URL (or http URL) of the image, for a multimodal teacher; None sends text only."""
    reference: str | None = None
    """Ground truth, when known (the oracle uses it; an endpoint gets it as a hint if given)."""


class Teacher(Protocol):
    def correct(self, items: Sequence[TeacherItem]) -> list[str | None]: ...


class OracleTeacher:
    """The ground truth is the minimal correction of a short answer; an answer that
    `answer_rule.is_correct` accepts ("A circle." for "circle", "Yes, there is" for "yes") is kept."""

    def correct(self, items: Sequence[TeacherItem]) -> list[str | None]:
        out: list[str | None] = []
        for item in items:
            if item.reference is None:
                out.append(None)
            elif is_correct(item.answer, item.reference):
                out.append(item.answer)
            else:
                out.append(item.reference)
        return out


class EndpointTeacher:
    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 3, concurrency: int = 4, backoff: float = 1.0) -> None:
        if retries < 0 or concurrency < 1 or timeout <= 0:
            raise ValueError("retries must be >= 0, concurrency >= 1 and timeout > 0")
        self.client = ChatClient(url, api_key_env, timeout=timeout, retries=retries, backoff=backoff)
        self.model, self.concurrency = model, concurrency

    def _messages(self, item: TeacherItem) -> list[dict]:
        text = (f"Question: {item.prompt}\nAnswer: {item.answer}"
                + (f"\nReference answer: {item.reference}" if item.reference else ""))
        user = user_message(text, [item.image_url] if item.image_url else (), as_parts=True)
        return [{"role": "system", "content": MINIMAL_EDIT_INSTRUCTION}, user]

    def _correct_one(self, item: TeacherItem) -> str | None:
        try:
            return self.client.complete(self.model, self._messages(item), temperature=0).text.strip()
        except EndpointError:
            return None  # dropped and counted by the caller

    def correct(self, items: Sequence[TeacherItem]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._correct_one, items))
