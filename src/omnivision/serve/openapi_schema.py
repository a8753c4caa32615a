"""The JSON schema of a chat completion request, as published in the server's `/openapi.json`.

The route reads its body itself (`chat_request`), so FastAPI cannot derive this; it is written out
here for clients and for schema-driven fuzzing. It describes what the server accepts; anything else
is refused with a 400 that names the field.
"""

from __future__ import annotations

_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"],
               "properties": {"type": {"const": "image_url"},
                              "image_url": {"type": "object", "required": ["url"],
                                            "properties": {"url": {"type": "string"},
                                                           "detail": {"type": "string"}}}}}
_CONTENT = {"anyOf": [{"type": "string"},
                      {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}]}

CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "developer", "user", "assistant"]},
                           "content": _CONTENT}}},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "n": {"type": "integer", "minimum": 1},
        "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "seed": {"type": "integer"},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0},
        "response_format": {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object", "json_schema"]},
            "json_schema": {"type": "object", "properties": {"name": {"type": "string"},
                                                             "schema": {"type": "object"},
                                                             "strict": {"type": "boolean"}}}}},
    },
}

OPENAPI_EXTRA = {"requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_REQUEST}}}}
