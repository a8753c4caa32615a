"""A client for OpenAI-compatible chat-completions endpoints (OpenAI, vLLM, llama.cpp server,
Ollama, ...), shared by the endpoint teacher, the MM-Vet judge and remote-model evaluation.

It POSTs `<base>/chat/completions` with a per-request timeout and retries a bounded number of times
with exponential backoff. What is retried follows the official `openai` client: connection errors,
timeouts, malformed replies, HTTP 5xx and the 4xx codes that can clear on their own (408 request
timeout, 409 conflict, 429 rate limit, honouring a numeric Retry-After header). Any other 4xx is a
problem with the request itself and fails at once. The API key is read from a named environment
variable, never from a file or the command line; a server that needs no key gets no header.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RETRYABLE_STATUSES = frozenset({408, 409, 429})
"""4xx statuses worth another try; every 5xx is retried as well."""


class EndpointError(OSError):
    """The endpoint gave no usable reply after the allowed tries (or refused the request)."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status, self.attempts = status, attempts


@dataclass(frozen=True)
class ChatReply:
    text: str
    """The first choice's message content, unchanged (not stripped)."""
    model: str | None
    """The model name the server says answered, when it says one."""


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_data_url(image: Any, fmt: str = "PNG") -> str:
    """A PIL image as a data URL (PNG keeps it lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return data_url(buffer.getvalue(), f"image/{fmt.lower()}")


def user_message(text: str, image_urls: Sequence[str] = (), as_parts: bool = False) -> dict:
    """A user turn: the images (data or http URLs) followed by the text as content parts, or the
    bare text string when there are no images (the form every server accepts) unless `as_parts`."""
    if not image_urls and not as_parts:
        return {"role": "user", "content": text}
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def chat_completions_url(url: str) -> str:
    """Accept either the API base (`http://host:8000/v1`) or the full chat-completions URL."""
    base = url.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


class ChatClient:
    def __init__(self, url: str, api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("endpoint: retries must be >= 0, timeout > 0 and backoff >= 0")
        self.url = chat_completions_url(url)
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout, self.retries = timeout, retries
        self.backoff, self.max_backoff = backoff, max_backoff

    def complete(self, model: str, messages: Sequence[dict], **params: Any) -> ChatReply:
        """One chat completion; `params` (temperature, max_tokens, ...) go into the request body.
        Raises EndpointError once the tries are used up or on a non-retryable status."""
        body = {"model": model, "messages": list(messages), **params}
        return self.post(body)

    def post(self, body: dict) -> ChatReply:
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            wait = self._delay(attempt)
            try:
                return _parse_reply(self._send(data))
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code not in RETRYABLE_STATUSES:
                    raise EndpointError(f"endpoint {self.url}: HTTP {e.code} {_error_text(e)}",
                                        e.code, attempt + 1) from None
                failure, status = f"HTTP {e.code} {_error_text(e)}", e.code
                wait = max(wait, _retry_after(e, self.max_backoff))
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, timeouts and dropped connections are OSErrors; a reply that is not
                # chat-completions JSON is a ValueError from _parse_reply
                failure, status = f"{type(e).__name__}: {e}", None
            if attempt < self.retries:
                time.sleep(wait)
        raise EndpointError(f"endpoint {self.url}: no reply after {self.retries + 1} tries "
                            f"(last: {failure})", status, self.retries + 1)

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** attempt)

    def _send(self, data: bytes) -> bytes:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return response.read()


def _parse_reply(raw: bytes) -> ChatReply:
    try:
        reply = json.loads(raw)
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
        raise ValueError(f"the reply is not a chat completion ({type(e).__name__}: {e})") from None
    if not isinstance(content, str):
        raise ValueError("the reply has no text content")
    model = reply.get("model")
    return ChatReply(content, model if isinstance(model, str) else None)


def _error_text(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(300).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _retry_after(error: urllib.error.HTTPError, cap: float) -> float:
    try:
        return min(cap, max(0.0, float(error.headers.get("Retry-After", 0))))
    except (TypeError, ValueError):
        return 0.0  # an HTTP-date Retry-After: fall back to the backoff
