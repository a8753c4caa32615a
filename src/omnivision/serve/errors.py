"""OpenAI's error object, and the one exception type every failure of a request becomes.

Every error the server returns has the shape `{"error": {"message", "type", "param", "code"}}`
with `type` from OpenAI's vocabulary and `code` a short string id (or null), so the official
clients raise their typed exceptions (`BadRequestError`, `AuthenticationError`, ...).
"""

from __future__ import annotations

from typing import Any

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
         431: "invalid_request_error", 500: "server_error", 503: "overloaded_error"}


class APIError(Exception):
    """A request that fails with `status`; `param` is the JSON path of the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return envelope(self.status, self.message, self.param, self.code)


def envelope(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def shown(value: Any, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: an error quotes what it refuses, but a 16 MiB
    string in a number's place must not come back whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)
