"""HTTP serving: OpenAI-style completions and chat completions, a health check and a small web page, for a run or
merged folder.

  POST /v1/completions        {"prompt", "max_tokens", "temperature", "top_p", "stream", "seed", "stop", "raw"}
  POST /v1/chat/completions   {"messages", "max_tokens" | "max_completion_tokens", "temperature", "top_p", "stream",
                               "stream_options", "seed", "stop"}
  GET  /v1/models             the one model served
  GET  /health                status, queue length, limits
  GET  /                      a page: question box, the answer streaming in, the not-medical-advice notice

A completion's prompt is wrapped in the run's prompt template (config.yaml) unless `"raw": true`; a chat's messages
are rendered as the run was trained (medtune.generate.conversation_record). Both routes go through one path: the
body read and checked (pydantic), the prompt's tokens fitted to the limits, a Job queued, the reply sent whole or
streamed (medtune.serving.replies). Requests wait in a bounded FIFO queue served by the engine's worker (a full
queue answers 429). A streaming request whose client goes away is cancelled, queued or running. Every error is JSON
in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`; a malformed request gets a 4xx, never a 5xx.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import ASGIApp

from medtune.errors import MedtuneError
from medtune.notice import NOTICE
from medtune.serving.engine import EngineClient, Job, Limits
from medtune.serving.replies import Reply
from medtune.serving.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    chat_turns,
    error_body,
    parse_json_object,
    validation_message,
)

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
log = logging.getLogger("medtune.serve")
R = TypeVar("R", bound=GenerationRequest)


def _err(status: int, message: str, type_: str = "invalid_request_error", param=None, headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param), status_code=status, headers=headers)


def _engine(request: Request) -> EngineClient:
    return request.app.state.engine


# ---------------------------------------------------------------- pages and metadata


def _page(engine: EngineClient) -> str:
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    subs = {
        "{{MODEL}}": engine.name,
        "{{NOTICE}}": NOTICE,
        "{{MAX_TOKENS}}": str(engine.max_tokens),
        "{{DEFAULT_MAX_TOKENS}}": str(engine.default_max_tokens),
        "{{TEMPERATURE}}": str(engine.default_temperature),
    }
    for k, v in subs.items():
        text = text.replace(k, html.escape(v, quote=True))
    return text


async def index(request: Request):
    return HTMLResponse(_page(_engine(request)), headers=PAGE_HEADERS)


async def static_file(name: str):
    path = STATIC / name
    if path.suffix not in STATIC_TYPES or path.name != name or not path.is_file():
        raise ApiError(404, f"no such file: {name}", "not_found_error")
    return Response(
        path.read_bytes(),
        media_type=STATIC_TYPES[path.suffix],
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
    )


async def health(request: Request):
    e = _engine(request)
    body = {
        "status": "failed" if e.failed else "ok",
        "model": e.name,
        "base_model": e.cfg.model.name,
        "busy": e.busy,
        "queued": e.pending,
        "limits": {
            "max_tokens": e.max_tokens,
            "max_prompt_tokens": e.max_prompt_tokens,
            "context": e.context,
            "queue_size": e.limits.queue_size,
            "max_body_bytes": e.limits.max_body_bytes,
        },
        "notice": NOTICE,
    }
    return JSONResponse(body, status_code=503 if e.failed else 200)


async def models(request: Request):
    return {
        "object": "list",
        "data": [{"id": _engine(request).name, "object": "model", "created": 0, "owned_by": "medtune"}],
    }


# ---------------------------------------------------------------- completions and chat completions: one path


async def _read_body(request: Request, limit: int) -> dict:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
    return parse_json_object(bytes(body))


async def _parse(request: Request, schema: type[R]) -> R:
    data = await _read_body(request, _engine(request).limits.max_body_bytes)
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        message, param = validation_message(e.errors(include_url=False), schema)
        raise ApiError(400, message, param=param) from None


def _new_tokens(engine: EngineClient, req: GenerationRequest) -> int:
    asked = req.new_tokens()
    if asked is None:
        return engine.default_max_tokens
    if asked > engine.max_tokens:
        name = "max_tokens" if req.max_tokens is not None else "max_completion_tokens"
        raise ApiError(400, f"'{name}' is {asked}; this server allows at most {engine.max_tokens}", param=name)
    return asked


def _too_many_chars(engine: EngineClient, chars: int, what: str, param: str) -> None:
    if chars > 16 * engine.max_prompt_tokens + 64:  # no tokenizer packs more chars per token than that
        raise ApiError(400, f"{what} too long (over {engine.max_prompt_tokens} tokens)", param=param)


def _fits(
    engine: EngineClient, ids: list[int], max_tokens: int, what: str, param: str, templated: bool = True
) -> list[int]:
    if len(ids) > engine.max_prompt_tokens:
        raise ApiError(
            400,
            f"{what} {len(ids)} tokens{' with the prompt template' if templated else ''}; this server "
            f"allows at most {engine.max_prompt_tokens}",
            param=param,
        )
    if len(ids) + max_tokens > engine.context:
        raise ApiError(
            400,
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
            f"of {engine.context} tokens; lower max_tokens",
            param="max_tokens",
        )
    return ids


def _completion_ids(engine: EngineClient, req: CompletionRequest, max_tokens: int) -> list[int]:
    prompt = req.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise ApiError(400, "send exactly one prompt per request", param="prompt")
        prompt = prompt[0]
    if not prompt.strip() and not (req.raw and prompt):
        raise ApiError(400, "'prompt' must not be empty", param="prompt")
    _too_many_chars(engine, len(prompt), "prompt is", "prompt")
    try:
        ids = engine.prompt_ids(prompt, req.raw)
    except (ValueError, TypeError):  # e.g. a lone surrogate: text that is not valid Unicode
        raise ApiError(400, "'prompt' is not valid text (invalid Unicode)", param="prompt") from None
    return _fits(engine, ids, max_tokens, "prompt is", "prompt", templated=not req.raw)


def _chat_ids(engine: EngineClient, req: ChatRequest, max_tokens: int) -> list[int]:
    turns = chat_turns(req.messages)
    _too_many_chars(engine, sum(len(t["content"]) for t in turns), "messages are", "messages")
    try:
        ids = engine.chat_ids(turns)
    except (ValueError, TypeError):
        raise ApiError(400, "'messages' hold text that is not valid (invalid Unicode)", param="messages") from None
    except MedtuneError as e:  # the run's chat template refused the conversation (e.g. roles that do not alternate)
        raise ApiError(400, str(e).removesuffix(" (use data.prompt_format=template)"), param="messages") from None
    return _fits(engine, ids, max_tokens, "messages are", "messages")


def _usage(job: Job, done: dict) -> dict:
    n = len(job.input_ids)
    return {
        "prompt_tokens": n,
        "completion_tokens": done["completion_tokens"],
        "total_tokens": n + done["completion_tokens"],
    }


async def _next_event(job: Job, held: list) -> tuple[str, Any]:
    """The job's next event; text that piled up while the server was busy comes as one piece (an event read past
    it waits in `held`)."""
    kind, value = held.pop() if held else await job.events.get()
    while kind == "text" and not job.events.empty():
        nxt = job.events.get_nowait()
        if nxt[0] != "text":
            held.append(nxt)
            break
        value += nxt[1]
    return kind, value


def _stream(reply: Reply, job: Job):
    """Server-sent events (sse-starlette): the reply's opening chunks, one chunk per piece of text, the ending chunks
    (finish reason, usage), then [DONE]. sse-starlette closes the generator when the client goes away: the job is
    cancelled."""
    from sse_starlette.sse import EventSourceResponse

    def sse(obj: dict) -> dict:
        return {"data": json.dumps(obj)}

    async def events():
        held: list = []
        try:
            for obj in reply.opening():
                yield sse(obj)
            while True:
                kind, value = await _next_event(job, held)
                if kind == "text":
                    yield sse(reply.piece(value))
                    continue
                if kind == "done":
                    for obj in reply.ending(value["finish_reason"], _usage(job, value)):
                        yield sse(obj)
                else:
                    yield sse(error_body(value, "server_error"))
                break
            yield {"data": "[DONE]"}
        finally:
            job.cancel.set()  # the client left (or we finished): stop or skip the generation

    return EventSourceResponse(events(), sep="\n", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _wait(request: Request, job: Job):
    kind = value = None
    try:
        while kind is None:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return None  # the client left; the finally clause cancels the job
    finally:
        if kind is None:
            job.cancel.set()
    return kind, value


async def _answer(request: Request, req: GenerationRequest, ids: list[int], max_tokens: int, reply: Reply):
    """Queue the generation (429 when the queue is full) and send its reply, whole or streamed."""
    engine = _engine(request)
    g = engine.cfg.generate
    job = Job(
        input_ids=ids,
        max_tokens=max_tokens,
        temperature=engine.default_temperature if req.temperature is None else req.temperature,
        top_p=g.top_p if req.top_p is None else req.top_p,
        seed=req.seed,
        stream=req.stream,
        loop=asyncio.get_running_loop(),
        stop=req.stops,
    )
    if not engine.submit(job):
        if engine.failed:
            raise ApiError(503, f"{engine.failed}; the server needs a restart", "server_error")
        raise ApiError(
            429,
            f"server busy: {engine.pending} requests queued; retry shortly",
            "server_busy",
            headers={"Retry-After": "1"},
        )
    if job.stream:
        return _stream(reply, job)
    result = await _wait(request, job)
    if result is None:
        return Response(status_code=499)
    kind, value = result
    if kind == "error":
        return _err(500, value, "server_error")
    return reply.whole(value["text"], value["finish_reason"], _usage(job, value))


async def completions(request: Request):
    engine = _engine(request)
    req = await _parse(request, CompletionRequest)
    max_tokens = _new_tokens(engine, req)
    ids = _completion_ids(engine, req, max_tokens)
    return await _answer(request, req, ids, max_tokens, Reply(engine.name, chat=False))


async def chat_completions(request: Request):
    engine = _engine(request)
    req = await _parse(request, ChatRequest)
    max_tokens = _new_tokens(engine, req)
    ids = _chat_ids(engine, req, max_tokens)
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    return await _answer(request, req, ids, max_tokens, Reply(engine.name, chat=True, usage_chunk=include_usage))


# ---------------------------------------------------------------- the app


async def _api_error(request, exc: ApiError):
    return _err(exc.status, exc.message, exc.type, exc.param, exc.headers)


async def _validation_error(request, exc: RequestValidationError):
    message, param = validation_message(list(exc.errors()))
    return _err(400, message, param=param)


async def _http_error(request, exc: StarletteHTTPException):
    type_ = {404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
    return _err(exc.status_code, str(exc.detail), type_, headers=getattr(exc, "headers", None))


async def _server_error(request, exc: Exception):
    log.exception("unhandled error")
    return _err(500, "internal server error", "server_error")


class HostCheck:
    """Answer only requests addressed to an allowed host name (blocks DNS rebinding onto a loopback server).
    starlette's TrustedHostMiddleware does the same but answers in plain text, not the API's JSON error shape."""

    def __init__(self, app, allowed: set[str]):
        self.app, self.allowed = app, {h.lower() for h in allowed}

    def __getattr__(self, name):
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = (
                host[1 : host.index("]")]
                if host.startswith("[") and "]" in host
                else host.rsplit(":", 1)[0]
                if host.count(":") == 1
                else host
            )
            if name not in self.allowed:
                await _err(400, f"host '{host}' is not served here")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    model_dir: str | Path | None = None,
    *,
    engine: EngineClient | None = None,
    limits: Limits | None = None,
    allowed_hosts: set[str] | None = None,
    api_key: str | None = None,
):
    """The FastAPI app. Pass a model folder (the app owns and closes its engine) or a ready EngineClient. With api_key,
    every route but /health needs it; /metrics serves Prometheus metrics."""
    from medtune.serving.middleware import ApiKeyAuth, Metrics

    owned = engine is None
    if engine is None:
        if model_dir is None:
            raise ValueError("create_app needs model_dir or engine")
        engine = EngineClient(model_dir, limits)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if owned:
            engine.close()

    app = FastAPI(title="medtune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    handlers: list[tuple[type[Exception], Callable[[Request, Any], Awaitable[Response]]]] = [
        (ApiError, _api_error),
        (RequestValidationError, _validation_error),
        (StarletteHTTPException, _http_error),
        (Exception, _server_error),
    ]
    for exc, handler in handlers:
        app.add_exception_handler(exc, handler)
    app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse)
    app.add_api_route("/static/{name}", static_file, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    wrapped: ASGIApp = Metrics(app, engine)
    if api_key:
        wrapped = ApiKeyAuth(wrapped, api_key)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        wrapped = HostCheck(wrapped, allowed_hosts)
    return wrapped
