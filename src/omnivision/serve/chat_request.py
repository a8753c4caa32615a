"""A `POST /v1/chat/completions` body, checked field by field into a `ChatRequest`.

Validation is done here rather than by FastAPI so that every refusal is OpenAI's 400 with `param`
set to the JSON path of the field (`messages[1].content[0].image_url.url`), not FastAPI's 422.
Unknown fields are ignored, as OpenAI's own server and vLLM do, so newer clients keep working.
Known fields this model cannot honour (tools, penalties other than 0) are refused by name.
Nothing here decodes an image or tokenizes text: those come after the cheap checks pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omnivision.serve.errors import APIError, bad_request, shown
from omnivision.serve.settings import Limits


@dataclass(frozen=True)
class ImageRef:
    url: str
    param: str
    """Where it came from in the request, for error messages."""


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "user" or "assistant"
    text: str
    image: ImageRef | None = None


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    system_prompt: str | None
    """The request's system message, or None to use the model's own."""
    max_tokens: int | None
    max_tokens_field: str = "max_tokens"
    """Which field the request used (`max_tokens` or `max_completion_tokens`), for errors."""
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    response_format: dict[str, Any] = field(default_factory=lambda: {"type": "text"})

    @property
    def images(self) -> list[ImageRef]:
        return [m.image for m in self.messages if m.image is not None]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _number(body: dict, name: str, default: float, lo: float, hi: float, *, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if not _is_number(v) or v > hi or (v <= lo if lo_open else v < lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise bad_request(f"{name} must be a number in {bound}, got {shown(v)}", name)
    return float(v)


def _integer(body: dict, name: str, lo: int, hi: int | None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise bad_request(f"{name} must be an integer {limit}, got {shown(v)}", name)
    return v


def _flag(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad_request(f"{name} must be true or false, got {shown(v)}", name)
    return v


def _unicode(text: str, param: str) -> str:
    """`text`, refused when JSON's escapes made it hold a lone surrogate (`"\\udcff"`): it is not
    Unicode, and it cannot be encoded for the size limit or the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad_request(f"the text holds a lone surrogate {text[e.start]!r} at character {e.start}, "
                          f"which is not valid Unicode", param, "invalid_text") from None
    return text


def _text_parts(content: Any, param: str, allow_images: bool) -> tuple[str, list[ImageRef]]:
    """The text of a message's content (a string or a list of parts) and its image parts."""
    if isinstance(content, str):
        return _unicode(content, param), []
    if not isinstance(content, list):
        raise bad_request("content must be a string or a list of content parts", param)
    texts, images = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise bad_request("a content part must be an object", where)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request("a text part needs a string 'text'", f"{where}.text")
            texts.append(_unicode(part["text"], f"{where}.text"))
        elif kind == "image_url":
            if not allow_images:
                raise bad_request("only user messages can carry images", where)
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str) or not url:
                raise bad_request("an image_url part needs a non-empty 'url'", f"{where}.image_url.url")
            images.append(ImageRef(url, f"{where}.image_url.url"))
        else:
            raise bad_request(f"unsupported content part type {shown(kind)} (use 'text' or 'image_url')",
                              f"{where}.type", "unsupported_content")
    return "\n".join(texts), images


def _messages(body: dict, limits: Limits) -> tuple[list[ChatMessage], str | None]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    system: list[str] = []
    out: list[ChatMessage] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("a message must be an object", where)
        role = m.get("role")
        if role in ("system", "developer"):
            text, _ = _text_parts(m.get("content"), f"{where}.content", allow_images=False)
            if out:
                raise bad_request("system messages must come before the conversation", f"{where}.role")
            system.append(text)
        elif role in ("user", "assistant"):
            content = m.get("content")
            if role == "assistant" and content is None:
                raise bad_request("assistant messages need content (tool calls are not supported)",
                                  f"{where}.content")
            text, images = _text_parts(content, f"{where}.content", allow_images=role == "user")
            if len(images) > 1:
                raise bad_request("this model takes at most one image per message", f"{where}.content",
                                  "too_many_images")
            out.append(ChatMessage(role, text, images[0] if images else None))
        else:
            raise bad_request(f"unsupported role {shown(role)} (use system, user or assistant)", f"{where}.role")
    if not out or out[-1].role != "user":
        raise bad_request("the last message must be from the user", "messages")
    images = sum(m.image is not None for m in out)
    if images > limits.images_per_request:
        raise bad_request(f"{images} images in the request; at most {limits.images_per_request} are allowed",
                          "messages", "too_many_images")
    size = sum(len(t.encode("utf-8")) for t in system) + sum(len(m.text.encode("utf-8")) for m in out)
    if size > limits.prompt_bytes:
        raise bad_request(f"the messages hold {size} bytes of text; at most {limits.prompt_bytes} are allowed",
                          "messages", "prompt_too_large")
    return out, "\n".join(system) if system else None


def _stop(body: dict, limits: Limits) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("stop must be a non-empty string or a list of them", "stop")
    if len(stops) > limits.max_stop:
        raise bad_request(f"at most {limits.max_stop} stop strings are allowed, got {len(stops)}", "stop")
    return tuple(stops)


def _response_format(body: dict) -> dict[str, Any]:
    v = body.get("response_format")
    if v is None:
        return {"type": "text"}
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request("response_format.type must be 'text', 'json_object' or 'json_schema'",
                          "response_format.type")
    if v["type"] == "json_schema":
        spec = v.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise bad_request("json_schema needs an object 'schema'", "response_format.json_schema")
    return v


def _refuse_unsupported(body: dict) -> None:
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad_request(f"{name} are not supported by this model", name, "unsupported_parameter")
    for name in ("presence_penalty", "frequency_penalty"):
        v = body.get(name)
        if v is not None and (not _is_number(v) or v != 0):
            raise bad_request(f"{name} is not supported (only 0)", name, "unsupported_parameter")
    if body.get("logit_bias"):
        raise bad_request("logit_bias is not supported", "logit_bias", "unsupported_parameter")


def parse_chat_request(body: Any, limits: Limits) -> ChatRequest:
    """Check a decoded JSON body; raises `APIError` (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string", "model")
    _refuse_unsupported(body)
    messages, system = _messages(body, limits)
    max_tokens, field_name = _integer(body, "max_completion_tokens", 1, None), "max_completion_tokens"
    if max_tokens is None:
        max_tokens, field_name = _integer(body, "max_tokens", 1, None), "max_tokens"
    logprobs = _flag(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0, limits.max_top_logprobs) or 0
    if top_logprobs and not logprobs:
        raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    stream = _flag(body, "stream")
    include_usage = bool(options and options.get("include_usage"))
    if include_usage and not stream:
        raise bad_request("stream_options is only allowed with stream: true", "stream_options")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -2**63 <= seed < 2**64):
        raise bad_request(f"seed must be a 64-bit integer, got {shown(seed)}", "seed")
    return ChatRequest(
        model=model, messages=tuple(messages), system_prompt=system, max_tokens=max_tokens,
        max_tokens_field=field_name,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        stop=_stop(body, limits), seed=seed, n=_integer(body, "n", 1, limits.max_n) or 1,
        stream=stream, include_usage=include_usage, logprobs=logprobs, top_logprobs=top_logprobs,
        response_format=_response_format(body))


__all__ = ["APIError", "ChatMessage", "ChatRequest", "ImageRef", "parse_chat_request"]
