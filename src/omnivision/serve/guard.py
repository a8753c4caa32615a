"""The ASGI layer in front of every route: the Host check, the API key and the body-size cap.

- With no API key, only localhost Host headers are served (`localhost`, `127.0.0.1`, `[::1]`, any
  port, plus names the operator adds): a web page that rebinds its own domain to 127.0.0.1 (DNS
  rebinding) gets 403 instead of a model.
- With a key, every route but `/health` needs it: `Authorization: Bearer KEY`, `X-Api-Key: KEY`, or
  HTTP Basic with the key as the password (so a browser can open the try-it page; its later
  requests carry the same credentials). Keys are compared in constant time.
- A request body over the cap is refused with 413: at once when `Content-Length` says so, otherwise
  as soon as the bytes read pass the cap (chunked uploads are never read to the end).
- A chat request gets its place in the engine (`reserve`) before its body is read: a full server
  answers 503 with `Retry-After` without reading a byte of it, and a body that does not arrive
  within `body_read_s` gets 408 and gives the place back. The route marks the place as reserved
  (`scope["state"]["reserved"]`) and either submits the job on it or releases it.

Written as plain ASGI rather than HTTP middleware so that streamed responses pass through untouched
and a client's disconnect still reaches the route (`request.is_disconnected()`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from typing import Any, Awaitable, Callable

from omnivision.serve.errors import envelope

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
PUBLIC_PATHS = ("/health",)


async def _reply(send: Send, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(envelope(status, message, None, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        return value[:value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError):  # bad base64, non-ASCII input, non-UTF-8 credentials
            return None
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


RESERVED_PATHS = ("/v1/chat/completions",)


class Guard:
    def __init__(self, app: Callable, api_key: str | None, extra_hosts: tuple[str, ...], body_limit: int,
                 reserve: Callable[[], str | None] | None = None, release: Callable[[], None] | None = None,
                 body_read_s: float = 30.0, retry_after_s: int = 2) -> None:
        self.app = app
        self.api_key = api_key
        self.hosts = {*LOCAL_HOSTS, *(h.lower() for h in extra_hosts)}
        self.body_limit = body_limit
        self.reserve, self.release = reserve, release
        """`reserve()` takes a place for a chat request (None) or says why there is none."""
        self.body_read_s, self.retry_after_s = body_read_s, retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                await _reply(send, 403, f"Host {host or '(none)'!r} is not served: this server answers "
                             "localhost only while it has no API key", "host_not_allowed")
                return
        elif scope["path"] not in PUBLIC_PATHS:
            key = _presented_key(headers)
            if key is None or not hmac.compare_digest(key.encode(), self.api_key.encode()):
                await _reply(send, 401, "a valid API key is required (Authorization: Bearer KEY)",
                             "invalid_api_key", {"WWW-Authenticate": 'Basic realm="omnivision"'})
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            await _reply(send, 413, f"the request body is over the limit of {self.body_limit} bytes",
                         "body_too_large")
            return
        reserved = False
        if self.reserve is not None and scope.get("method") == "POST" and scope["path"] in RESERVED_PATHS:
            refusal = self.reserve()
            if refusal is not None:
                await _reply(send, 503, f"the server is busy ({refusal}); retry shortly", "server_overloaded",
                             {"Retry-After": str(self.retry_after_s)})
                return
            reserved = True
            scope.setdefault("state", {})["reserved"] = True
        try:
            body, complete = await asyncio.wait_for(self._read_body(receive), self.body_read_s)
        except asyncio.TimeoutError:
            complete = None
        if not complete:
            if reserved:
                self.release()
            if complete is None:
                await _reply(send, 408, f"the request body did not arrive within {self.body_read_s:g} s",
                             "request_timeout")
            else:
                await _reply(send, 413, f"the request body is over the limit of {self.body_limit} bytes",
                             "body_too_large")
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: the client's disconnect, when it comes

        await self.app(scope, replay, send)

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks), True
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.body_limit:
                return b"", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True
