"""The JSON objects of OpenAI's chat API: a completion, a streamed chunk, usage, logprobs, the model list.

Field names and nesting follow OpenAI's published schema (`chat.completion`,
`chat.completion.chunk`, `list` of `model`), so the official clients parse them into their types.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from typing import Any

from omnivision.generation.logprobs import TokenLogprob
from omnivision.processing.tokenizer import Tokenizer


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(cid: str, model: str, created: int, choices: list[dict], prompt: int, completion_tokens: int
               ) -> dict[str, Any]:
    """choices: [{"text", "finish_reason", "logprobs": list | None}] in index order."""
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": None,
        "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"], "refusal": None},
                     "logprobs": None if c["logprobs"] is None else {"content": c["logprobs"], "refusal": None},
                     "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)],
        "usage": usage(prompt, completion_tokens),
    }


def chunk(cid: str, model: str, created: int, index: int, *, role: bool = False, content: str | None = None,
          logprobs: list | None = None, finish_reason: str | None = None) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None,
            "choices": [{"index": index, "delta": delta,
                         "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                         "finish_reason": finish_reason}]}


def usage_chunk(cid: str, model: str, created: int, prompt: int, completion_tokens: int) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": None, "choices": [], "usage": usage(prompt, completion_tokens)}


def models(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                        "owned_by": "omnivision"}]}


def sse(payload: dict | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` passed as a string)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")


def now() -> int:
    return int(time.time())


def logprob_entry(tokenizer: Tokenizer, record: TokenLogprob) -> dict[str, Any]:
    """One `choices[].logprobs.content` entry: the token's text, logprob and bytes, and its top
    alternatives (a -inf logprob, which JSON cannot carry, is reported as -9999.0)."""
    def one(token: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token], skip_special=False)
        return {"token": text, "logprob": logprob if math.isfinite(logprob) else -9999.0,
                "bytes": list(text.encode("utf-8"))}

    return {**one(record.token, record.logprob),
            "top_logprobs": [one(t, lp) for t, lp in record.alternatives]}
