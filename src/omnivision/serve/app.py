"""The FastAPI app: `/v1/chat/completions`, `/v1/models`, `/health` and the try-it page at `/`.

A chat request goes through the cheap checks first and the expensive work last: the body cap and
the key (`guard`), the fields (`chat_request`), the model name, the prompt's token count against
the context (before any image is touched), a free place in the queue, and only then the images
are fetched and decoded (in a worker thread, never on the event loop) and the job is queued for a
generation slot (`engine`). Every failure is OpenAI's error object; bad input never becomes a 500.
A client that goes away cancels its job, waiting or running. Prompts are built by the Python API
(`OmniVision.conversation_ids`), never here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from omnivision.processing.prompt import Message
from omnivision.serve import image_intake, openai_format
from omnivision.serve.chat_request import ChatRequest, parse_chat_request
from omnivision.serve.engine import Choice, Engine, Job, Overloaded
from omnivision.serve.events import Done, Failed, Finished, Piece
from omnivision.serve.errors import APIError, bad_request, envelope, shown
from omnivision.serve.guard import Guard
from omnivision.serve.openapi_schema import OPENAPI_EXTRA
from omnivision.serve.settings import ServerSettings
from omnivision.vlm import OmniVision

RETRY_AFTER_S = 2
DISCONNECT_POLL_S = 0.25
"""How often a plain (non-streamed) request checks that its client is still there."""


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _prompt_ids(vlm: OmniVision, req: ChatRequest) -> list[int]:
    messages = [Message(m.role, m.text, m.image is not None) for m in req.messages]
    return vlm.conversation_ids(messages, req.system_prompt)


def _token_budget(vlm: OmniVision, req: ChatRequest, prompt: int, default: int) -> int:
    """The answer's token limit: the request's, else the rest of the context up to `default` (the
    KV cache is sized for it up front) and, when answers are batched, up to what a row of the
    batch holds."""
    context = vlm.config.text.max_position_embeddings
    if vlm.batcher is not None and prompt < vlm.batcher.max_len:
        default = min(default, vlm.batcher.max_len - prompt)
    if req.max_tokens is not None and req.max_tokens >= context:
        raise bad_request(f"{req.max_tokens_field} is {req.max_tokens}; this model's context is {context} tokens",
                          req.max_tokens_field, "context_length_exceeded")
    wanted = req.max_tokens if req.max_tokens is not None else min(context - prompt, default)
    if prompt + max(wanted, 1) > context:
        raise bad_request(f"the prompt is {prompt} tokens and asks for {wanted} more; this model's context "
                          f"is {context} tokens", "messages", "context_length_exceeded")
    return wanted


def _choices(req: ChatRequest, budget: int, constraint_factory) -> list[Choice]:
    return [Choice(max_tokens=budget, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                   stop=req.stop, top_logprobs=req.top_logprobs if req.logprobs else None,
                   constraint_factory=constraint_factory) for _ in range(req.n)]


def create_app(vlm: OmniVision, settings: ServerSettings | None = None) -> Any:
    """The ASGI app (FastAPI behind `guard.Guard`); its `state.engine` owns the generation slots
    (`max_batch` of them; above 1 their answers are decoded in one batch)."""
    settings = settings or ServerSettings()
    engine = Engine(vlm, slots=settings.max_batch, queue=settings.queue, max_pixels=settings.limits.max_pixels)
    if settings.max_batch > 1:
        vlm.start_batching(settings.max_batch, settings.batch_context)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()
        if settings.max_batch > 1:
            vlm.stop_batching()

    api = FastAPI(title="omnivision", docs_url=None, redoc_url=None, openapi_url="/openapi.json",
                  lifespan=lifespan)
    api.state.engine, api.state.settings = engine, settings
    started = openai_format.now()

    @api.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(envelope(e.status_code, str(e.detail), None, code), status_code=e.status_code)

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse(envelope(500, "internal error", None, "internal_error"), status_code=500)

    @api.get("/health")
    async def health() -> dict:
        return {"status": "ok", "running": engine.running, "waiting": engine.waiting}

    @api.get("/v1/models")
    async def list_models() -> dict:
        return openai_format.models(settings.model_name, started)

    @api.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("omnivision.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                           "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"})

    @api.post("/v1/chat/completions", openapi_extra=OPENAPI_EXTRA)
    async def chat_completions(request: Request) -> Response:
        # the guard reserved a place before reading the body (`Guard.reserve`): submit the job on it,
        # or give it back
        handed = False
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser goes
                raise APIError(400, f"the request body is not valid JSON: {type(e).__name__}: {str(e)[:200]}",
                               code="invalid_json") from None
            req = parse_chat_request(body, settings.limits)
            if req.model != settings.model_name:
                raise APIError(404, f"the model {shown(req.model)} does not exist; this server has "
                               f"{settings.model_name!r}", param="model", code="model_not_found")
            ids = await asyncio.to_thread(_prompt_ids, vlm, req)
            budget = _token_budget(vlm, req, len(ids), settings.default_max_tokens)
            constraint_factory = None
            if req.response_format["type"] != "text":
                from omnivision.serve.json_output import constraint_factory as make

                constraint_factory = await asyncio.to_thread(make, vlm.tokenizer, req.response_format,
                                                             vlm.config.stop_token_ids)
            images = await asyncio.to_thread(_images, req, settings)
            job = Job(ids, images, _choices(req, budget, constraint_factory),
                      deadline_s=time.monotonic() + settings.request_timeout_s, loop=asyncio.get_running_loop())
            handed = True  # submit takes the place over, also when it refuses
            engine.submit(job)
        except Overloaded as e:
            raise _overloaded(str(e)) from None
        finally:
            if not handed:
                engine.release()
        cid, created = openai_format.completion_id(), openai_format.now()
        if req.stream:
            return StreamingResponse(_stream(engine, job, req, cid, created, settings.model_name),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _complete(engine, job, req, cid, created, settings.model_name, request)

    return Guard(api, settings.api_key, settings.allowed_hosts, settings.limits.body_bytes,
                 reserve=lambda: _reserve(engine), release=engine.release,
                 body_read_s=settings.limits.body_read_s, retry_after_s=RETRY_AFTER_S)


def _reserve(engine: Engine) -> str | None:
    """A place in the engine for a chat request (None), or why there is none."""
    try:
        engine.admit()
    except Overloaded as e:
        return str(e)
    return None


def _overloaded(why: str) -> APIError:
    return APIError(503, f"the server is busy ({why}); retry shortly", code="server_overloaded",
                    headers={"Retry-After": str(RETRY_AFTER_S)})


def _images(req: ChatRequest, settings: ServerSettings) -> list:
    return [image_intake.decode(image_intake.image_bytes(ref, settings), ref, settings) for ref in req.images]


async def _complete(engine: Engine, job: Job, req: ChatRequest, cid: str, created: int, model: str,
                    request: Request) -> Response:
    texts = [[] for _ in range(req.n)]
    logprobs: list[list | None] = [[] if req.logprobs else None for _ in range(req.n)]
    reasons = ["stop"] * req.n
    next_check = time.monotonic() + DISCONNECT_POLL_S
    try:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                event = None
            if time.monotonic() >= next_check:  # also while events keep coming
                next_check = time.monotonic() + DISCONNECT_POLL_S
                if await request.is_disconnected():
                    engine.cancel(job)
                    return Response(status_code=499)
            if isinstance(event, Piece):
                texts[event.index].append(event.text)
                if logprobs[event.index] is not None:
                    logprobs[event.index].extend(event.logprobs)
            elif isinstance(event, Finished):
                reasons[event.index] = event.reason
            elif isinstance(event, Failed):
                return JSONResponse(envelope(500, event.message, None, "generation_failed"), status_code=500)
            elif isinstance(event, Done):
                choices = [{"text": "".join(t), "finish_reason": r, "logprobs": lp}
                           for t, r, lp in zip(texts, reasons, logprobs)]
                return JSONResponse(openai_format.completion(cid, model, created, choices, event.prompt_tokens,
                                                             event.completion_tokens))
    finally:
        engine.cancel(job)


async def _stream(engine: Engine, job: Job, req: ChatRequest, cid: str, created: int, model: str
                  ) -> AsyncIterator[bytes]:
    try:
        for index in range(req.n):
            yield openai_format.sse(openai_format.chunk(cid, model, created, index, role=True, content=""))
        while True:
            event = await job.events.get()
            if isinstance(event, Piece):
                yield openai_format.sse(openai_format.chunk(cid, model, created, event.index, content=event.text,
                                                            logprobs=event.logprobs if req.logprobs else None))
            elif isinstance(event, Finished):
                yield openai_format.sse(openai_format.chunk(cid, model, created, event.index,
                                                            finish_reason=event.reason))
            elif isinstance(event, Failed):
                yield openai_format.sse(envelope(500, event.message, None, "generation_failed"))
                break
            elif isinstance(event, Done):
                if req.include_usage:
                    yield openai_format.sse(openai_format.usage_chunk(cid, model, created, event.prompt_tokens,
                                                                      event.completion_tokens))
                break
        yield openai_format.sse("[DONE]")
    finally:  # also when the client went away and the response task was cancelled
        engine.cancel(job)
