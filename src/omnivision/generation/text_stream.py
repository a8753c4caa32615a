"""From generated token ids to answer text, piece by piece.

Owns the text-level rules of an answer: incremental UTF-8-safe decoding, removal of the assistant
header that the official model writes itself (`<|im_start|>assistant\\n`, stripped as Nexa's SDK
does), user stop strings (text is held back while it could still become one), the final strip, and why
the answer ended (`finish_reason`: a stop, the length limit, or what an `interrupt` check said).
Ending early closes the token generator, which stops generation.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from omnivision.processing.prompt import ASSISTANT_HEADER
from omnivision.processing.tokenizer import StreamDecoder, Tokenizer


class TextStream:
    """Iterate to get text pieces; `token_ids` holds every id consumed so far.

    `limit`: the generator's token limit, so that running into it reads as `finish_reason` "length".
    `interrupt`: called after every token; a non-empty return ends the answer (its text so far is
    still released) and becomes `finish_reason` (a server's cancellation or deadline).
    """

    def __init__(self, tokens: Iterator[int], tokenizer: Tokenizer, stop: Sequence[str] = (), *,
                 limit: int | None = None, interrupt: Callable[[], str | None] | None = None) -> None:
        self._tokens = tokens
        self._decoder = StreamDecoder(tokenizer)
        self._stop = [s for s in stop if s]
        self._limit, self._interrupt = limit, interrupt
        self.token_ids: list[int] = []
        self.stopped_by: str | None = None
        """The stop string that ended the answer, if any."""
        self.finish_reason: str | None = None
        """Once the stream is exhausted: "stop" (a stop token or string), "length" (the token
        limit) or the interrupt's reason."""
        self._pending = ""  # decoded, not yet emitted
        self._started = False  # header handled and leading whitespace dropped
        self._header_done = False  # the assistant header was seen and removed (it is removed once)

    def __iter__(self) -> Iterator[str]:
        for token in self._tokens:
            self.token_ids.append(token)
            self._pending += self._decoder.push(token)
            piece, done = self._release(final=False)
            if piece:
                yield piece
            if done:
                self.finish_reason = "stop"
                return self._close()
            if self._interrupt is not None and (why := self._interrupt()):
                self.finish_reason = why
                self._close()
                break
        self._pending += self._decoder.flush()
        piece, done = self._release(final=True)
        if piece:
            yield piece
        if done:  # a stop string completed by the last piece
            self.finish_reason = "stop"
        elif self.finish_reason is None:
            at_limit = self._limit is not None and len(self.token_ids) >= self._limit
            self.finish_reason = "length" if at_limit else "stop"

    def _close(self) -> None:
        close = getattr(self._tokens, "close", None)
        if close is not None:
            close()

    def _release(self, final: bool) -> tuple[str, bool]:
        """Text that can be emitted now, and whether a stop string ended the answer."""
        if not self._started:
            head = self._pending.lstrip()
            if not final and (not head or not self._header_done and ASSISTANT_HEADER.startswith(head)):
                return "", False  # could still be the header
            if not self._header_done and head.startswith(ASSISTANT_HEADER):
                head = head[len(ASSISTANT_HEADER):].lstrip()
                self._header_done = True
                if not head and not final:
                    self._pending = ""
                    return "", False
            self._pending, self._started = head, True
        # several stop strings can complete in one piece: the answer ends at the earliest
        found = [(at, s) for s in self._stop if (at := self._pending.find(s)) >= 0]
        if found:
            at, self.stopped_by = min(found, key=lambda f: f[0])
            out, self._pending = self._pending[:at], ""
            return out.rstrip(), True
        if final:
            out, self._pending = self._pending.rstrip(), ""
            return out, False
        keep = self._holdback()
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(out):]
        # trailing whitespace is held until more text follows, so the answer ends stripped
        stripped = out.rstrip()
        self._pending = out[len(stripped):] + self._pending
        return stripped, False

    def _holdback(self) -> int:
        """Length of the longest suffix of the pending text that is a prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:n]):
                    best = n
                    break
        return best
