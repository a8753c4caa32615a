"""`response_format` json_object / json_schema by constrained decoding, with llguidance.

llguidance (the constrained-decoding library behind llama.cpp's and vLLM's JSON modes) compiles the
schema into a grammar over this model's own tokenizer and, at every step, gives the set of tokens
that keep the output a valid prefix; everything else is masked to -inf before sampling, and the end
of the answer is allowed only once the JSON is complete. So an answer that ends by itself (not by
`max_tokens`) is valid JSON that matches the schema. `json_object` is the schema `{"type": "object"}`.
The tokenizer conversion is done once per tokenizer object and kept; the app runs all of this off
the event loop.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any, Callable

import torch

from omnivision.processing.tokenizer import Tokenizer
from omnivision.serve.errors import bad_request


_CONVERTED: "weakref.WeakKeyDictionary[Tokenizer, Any]" = weakref.WeakKeyDictionary()
_CONVERTING = threading.Lock()


def _ll_tokenizer(tokenizer: Tokenizer, eos: int):
    """llguidance's view of `tokenizer`, converted once per tokenizer object (seconds for 151k tokens)."""
    import llguidance

    with _CONVERTING:
        if tokenizer not in _CONVERTED:
            _CONVERTED[tokenizer] = llguidance.LLTokenizer(tokenizer.backend.to_str(), n_vocab=tokenizer.vocab_size,
                                                           eos_token=eos)
        return _CONVERTED[tokenizer]


_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""Whitespace is fixed (as `json.dumps` writes it): with it free, a small model can pad forever."""


def _schema(response_format: dict[str, Any]) -> dict[str, Any]:
    if response_format["type"] == "json_object":
        return {"type": "object"}
    return response_format.get("json_schema", {}).get("schema") or {"type": "object"}


class JSONConstraint:
    """StepHooks for one answer: masks the logits to the grammar and follows the chosen tokens."""

    def __init__(self, ll_tokenizer, grammar: str, vocab: int) -> None:
        import llguidance
        import llguidance.torch as lt

        self._lt = lt
        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        self.mask = lt.allocate_token_bitmask(1, ll_tokenizer.vocab_size)  # [1, ceil(V / 32)] int32
        self.vocab = vocab

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        # logits: [1, V] float
        self._lt.fill_next_token_bitmask(self.matcher, self.mask, 0)
        out = logits.clone()
        self._lt.apply_token_bitmask_inplace(out, self.mask)
        return out

    def observe(self, logits: torch.Tensor, tokens: torch.Tensor) -> None:
        if not self.matcher.is_stopped():
            self.matcher.consume_token(int(tokens[0]))


def constraint_factory(tokenizer: Tokenizer, response_format: dict[str, Any],
                       stop_ids: tuple[int, ...]) -> Callable[[], JSONConstraint]:
    """A maker of fresh constraints for this request (one per choice); a bad schema is a 400."""
    try:
        import llguidance
    except ImportError:
        raise bad_request("JSON output needs the llguidance package on the server (the serve extra)",
                          "response_format", "unsupported_parameter") from None
    vocab = tokenizer.vocab_size
    ll_tok = _ll_tokenizer(tokenizer, stop_ids[0])
    schema = _schema(response_format)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=_LAYOUT)
        error = llguidance.LLMatcher.validate_grammar(grammar, ll_tok)
    except (ValueError, TypeError, RuntimeError) as e:
        error = str(e)
    if error:
        raise bad_request(f"the JSON schema cannot be used: {error}", "response_format.json_schema.schema",
                          "invalid_json_schema")
    return lambda: JSONConstraint(ll_tok, grammar, vocab)
