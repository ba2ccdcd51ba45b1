"""HTTP serving: an OpenAI-style completions API, a health check and a small web page, for a run or merged folder.

  POST /v1/completions   {"prompt", "max_tokens", "temperature", "top_p", "stream", "seed", "raw"}  (OpenAI shape)
  GET  /v1/models        the one model served
  GET  /health           status, queue length, limits
  GET  /                 a page: question box, the answer streaming in, the not-medical-advice notice

The question is wrapped in the run's prompt template (config.yaml) unless `"raw": true`. One generation runs at a
time: requests wait in a FIFO queue served by a single worker thread (bounded: a full queue answers 429). A
streaming request whose client goes away is cancelled, queued or running. Every error is JSON in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`; a malformed request gets a 4xx, never a 5xx.
"""
from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import logging
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request  # module level: FastAPI resolves the handler's annotation here

from medtune.errors import MedtuneError
from medtune.files import NOTICE

STATIC = Path(__file__).parent / "static"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("medtune.serve")


@dataclass
class Limits:
    max_tokens: int = 512            # largest max_tokens a request may ask for (also capped by the context)
    max_prompt_tokens: int | None = None  # default: the model's context minus one
    max_body_bytes: int = 65536      # larger request bodies get 413
    queue_size: int = 64             # requests queued or running; beyond that 429


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---------------------------------------------------------------- the generation worker

@dataclass
class Job:
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value) -> None:
        """Called from the worker thread: hand an event to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


def _streamer_class():
    from transformers import TextStreamer

    class JobStreamer(TextStreamer):
        """TextStreamer's word-boundary-safe incremental decoding, sending text to the job instead of stdout."""

        def __init__(self, tokenizer, job: Job):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.job = job

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.job.emit("text", text)

    return JobStreamer


def _cancel_criteria(event: threading.Event):
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return Cancelled()


class Engine:
    """The model, its tokenizer and config, and one worker thread that runs queued jobs one at a time."""

    def __init__(self, model_dir: str | Path, limits: Limits | None = None, device: str | None = None):
        from medtune.model import load_for_inference

        self.limits = limits or Limits()
        model, tok, cfg = load_for_inference(model_dir, device=device)
        if cfg.model.quantization == "none" and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # same function, faster: no separate LoRA matmuls per token
            model.eval()
        self.model, self.tok, self.cfg = model, tok, cfg
        self.name = Path(model_dir).resolve().name
        mc = model.config
        ctx = getattr(mc, "n_positions", None) or getattr(mc, "max_position_embeddings", None)
        self.context = int(ctx or min(tok.model_max_length, 1_000_000))
        self.max_tokens = max(1, min(self.limits.max_tokens, self.context - 1))
        self.max_prompt_tokens = min(self.limits.max_prompt_tokens or self.context - 1, self.context - 1)
        self.default_max_tokens = max(1, min(cfg.generate.max_new_tokens, self.max_tokens))
        self._device = next(model.parameters()).device
        self._jobs: queue.Queue = queue.Queue()
        self._count = 0
        self._count_lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._streamer = _streamer_class()
        self._thread = threading.Thread(target=self._work, name="medtune-generate", daemon=True)
        self._thread.start()

    # -- queue
    @property
    def pending(self) -> int:
        return self._count

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the queue is full (or the engine closed)."""
        with self._count_lock:
            if self._closed or self._count >= self.limits.queue_size:
                return False
            self._count += 1
        self._jobs.put(job)
        return True

    def close(self) -> None:
        self._closed = True
        self._jobs.put(None)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                if not job.cancel.is_set():
                    self._busy = True
                    job.emit("done", self.run(job))
            except Exception as e:  # a bug or an out-of-memory: report it to this request, keep serving
                log.exception("generation failed")
                job.emit("error", f"generation failed ({type(e).__name__})")
            finally:
                self._busy = False
                with self._count_lock:
                    self._count -= 1

    # -- generation
    def prompt_ids(self, prompt: str, raw: bool) -> list[int]:
        from medtune.generate import prompt_for

        text = prompt if raw else prompt_for(prompt, self.cfg.data)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def run(self, job: Job) -> dict:
        """Generate for one job (worker thread). Streams text through job.emit when job.stream."""
        import torch
        from transformers import StoppingCriteriaList, set_seed

        from medtune.generate import generation_kwargs

        g = dataclasses.replace(self.cfg.generate, max_new_tokens=job.max_tokens, temperature=job.temperature,
                                top_p=job.top_p, greedy=job.temperature <= 0)
        if job.seed is not None:
            set_seed(job.seed)
        ids = torch.tensor([job.input_ids], device=self._device)
        streamer = self._streamer(self.tok, job) if job.stream else None
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                      stopping_criteria=StoppingCriteriaList([_cancel_criteria(job.cancel)]),
                                      **generation_kwargs(g, self.tok))
        new = out[0, ids.shape[1]:].tolist()
        eos = self.tok.eos_token_id
        stopped = eos in new
        if stopped:
            new = new[: new.index(eos)]
        return {"text": self.tok.decode(new, skip_special_tokens=True), "completion_tokens": len(new),
                "finish_reason": "stop" if stopped else "length"}


# ---------------------------------------------------------------- request validation

def _request_model():
    from pydantic import BaseModel, ConfigDict, Field

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: str | list[str]
        max_tokens: int | None = Field(None, ge=1)
        temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
        top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
        stream: bool = False
        seed: int | None = Field(None, ge=0, le=2**32 - 1)
        raw: bool = False  # medtune extension: send the prompt as-is, without the run's prompt template
        model: str | None = None  # accepted for OpenAI clients; there is one model
        n: int = Field(1, ge=1, le=1)
        user: str | None = None

    return CompletionRequest


FIELD_TYPES = {"prompt": "a string", "max_tokens": "an integer", "temperature": "a number", "top_p": "a number",
               "stream": "true or false", "seed": "an integer", "raw": "true or false", "model": "a string",
               "n": "an integer", "user": "a string"}


def _validation_message(errors: list[dict]) -> tuple[str, str | None]:
    e = errors[0]
    name = str(e["loc"][0]) if e.get("loc") else None
    if e["type"] == "extra_forbidden":
        return f"unknown field '{name}' (accepted: {', '.join(FIELD_TYPES)})", name
    if e["type"] == "missing":
        return f"'{name}' is required", name
    if name == "n":
        return "only n=1 is supported", name
    if e["type"].endswith("_type") or e["type"] in ("list_type", "string_type"):
        want = FIELD_TYPES.get(name, "of another type")
        if name == "prompt":
            want += " (or a list holding one string)"
        return f"'{name}' must be {want}", name
    return f"'{name}': {e['msg']}", name


def _reject_constant(value: str):
    raise ValueError(f"{value} is not valid JSON")


# ---------------------------------------------------------------- the app

def _page(engine: Engine) -> str:
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    subs = {"{{MODEL}}": engine.name, "{{NOTICE}}": NOTICE, "{{MAX_TOKENS}}": str(engine.max_tokens),
            "{{DEFAULT_MAX_TOKENS}}": str(engine.default_max_tokens),
            "{{TEMPERATURE}}": str(engine.cfg.generate.temperature)}
    for k, v in subs.items():
        text = text.replace(k, html.escape(v, quote=True))
    return text


PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


class HostCheck:
    """Answer only requests addressed to an allowed host name (blocks DNS rebinding onto a loopback server)."""

    def __init__(self, app, allowed: set[str]):
        self.app, self.allowed = app, {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "*" not in self.allowed:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
            name = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0] \
                if host.count(":") == 1 else host
            if name not in self.allowed:
                from starlette.responses import JSONResponse
                await JSONResponse(error_body(f"host '{host}' is not served here"), status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(model_dir: str | Path | None = None, *, engine: Engine | None = None, limits: Limits | None = None,
               allowed_hosts: set[str] | None = None):
    """The FastAPI app. Pass a model folder (the app owns and closes its engine) or a ready Engine."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

    owned = engine is None
    if engine is None:
        if model_dir is None:
            raise ValueError("create_app needs model_dir or engine")
        engine = Engine(model_dir, limits)
    CompletionRequest = _request_model()
    static = {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in STATIC.iterdir()
              if p.suffix in STATIC_TYPES}

    @asynccontextmanager
    async def lifespan(app):
        yield
        if owned:
            engine.close()

    app = FastAPI(title="medtune", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine

    def err(status: int, message: str, type_: str = "invalid_request_error", param=None, headers=None):
        return JSONResponse(error_body(message, type_, param), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return err(exc.status, exc.message, exc.type, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        message, param = _validation_message(list(exc.errors()))
        return err(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        type_ = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        return err(exc.status_code, str(exc.detail), type_, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request, exc: Exception):
        log.exception("unhandled error")
        return err(500, "internal server error", "server_error")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(_page(engine), headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    async def static_file(name: str):
        if name not in static:
            raise ApiError(404, f"no such file: {name}", "not_found_error")
        body, media_type = static[name]
        return Response(body, media_type=media_type, headers={"X-Content-Type-Options": "nosniff",
                                                               "Cache-Control": "no-cache"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "base_model": engine.cfg.model.name,
                "busy": engine._busy, "queued": engine.pending,
                "limits": {"max_tokens": engine.max_tokens, "max_prompt_tokens": engine.max_prompt_tokens,
                           "context": engine.context, "queue_size": engine.limits.queue_size,
                           "max_body_bytes": engine.limits.max_body_bytes},
                "notice": NOTICE}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "medtune"}]}

    async def read_json(request: Request) -> dict:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
        limit = engine.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body is larger than {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(413, f"request body is larger than {limit} bytes")
        if not body.strip():
            raise ApiError(400, "request body is empty; send a JSON object with a 'prompt'")
        try:
            data = json.loads(bytes(body).decode("utf-8"), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ApiError(400, "request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object")
        return data

    def completion(id_: str, created: int, text: str, finish, usage=None, notice=True) -> dict:
        obj = {"id": id_, "object": "text_completion", "created": created, "model": engine.name,
               "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            obj["usage"] = usage
        if notice:
            obj["notice"] = NOTICE
        return obj

    @app.post("/v1/completions")
    async def completions(request: Request):
        data = await read_json(request)
        try:
            req = CompletionRequest.model_validate(data)
        except ValidationError as e:
            message, param = _validation_message(e.errors(include_url=False))
            raise ApiError(400, message, param=param) from None
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "send exactly one prompt per request", param="prompt")
            prompt = prompt[0]
        if not prompt.strip() and not (req.raw and prompt):
            raise ApiError(400, "'prompt' must not be empty", param="prompt")
        max_tokens = req.max_tokens if req.max_tokens is not None else engine.default_max_tokens
        if max_tokens > engine.max_tokens:
            raise ApiError(400, f"'max_tokens' is {max_tokens}; this server allows at most {engine.max_tokens}",
                           param="max_tokens")
        if len(prompt) > 16 * engine.max_prompt_tokens + 64:  # no tokenizer packs more chars per token than that
            raise ApiError(400, f"prompt is too long (over {engine.max_prompt_tokens} tokens)", param="prompt")
        ids = engine.prompt_ids(prompt, req.raw)
        if len(ids) > engine.max_prompt_tokens:
            raise ApiError(400, f"prompt is {len(ids)} tokens{'' if req.raw else ' with the prompt template'}; "
                                f"this server allows at most {engine.max_prompt_tokens}", param="prompt")
        if len(ids) + max_tokens > engine.context:
            raise ApiError(400, f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                                f"of {engine.context} tokens; lower max_tokens", param="max_tokens")
        g = engine.cfg.generate
        job = Job(input_ids=ids, max_tokens=max_tokens,
                  temperature=g.temperature if req.temperature is None else req.temperature,
                  top_p=g.top_p if req.top_p is None else req.top_p, seed=req.seed, stream=req.stream,
                  loop=asyncio.get_running_loop())
        if not engine.submit(job):
            raise ApiError(429, f"server busy: {engine.pending} requests queued; retry shortly", "server_busy",
                           headers={"Retry-After": "1"})
        id_, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def usage(done: dict) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": done["completion_tokens"],
                    "total_tokens": len(ids) + done["completion_tokens"]}

        if req.stream:
            async def events():
                first = True
                try:
                    while True:
                        kind, value = await job.events.get()
                        if kind == "text":
                            yield f"data: {json.dumps(completion(id_, created, value, None, notice=first))}\n\n"
                            first = False
                        elif kind == "done":
                            final = completion(id_, created, "", value["finish_reason"], usage(value))
                            yield f"data: {json.dumps(final)}\n\n"
                            break
                        else:
                            yield f"data: {json.dumps(error_body(value, 'server_error'))}\n\n"
                            break
                    yield "data: [DONE]\n\n"
                finally:
                    job.cancel.set()  # the client left (or we finished): stop or skip the generation

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        kind = value = None
        try:
            while kind is None:
                try:
                    kind, value = await asyncio.wait_for(job.events.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return Response(status_code=499)  # the client left; the finally clause cancels the job
        finally:
            if kind is None:
                job.cancel.set()
        if kind == "error":
            return err(500, value, "server_error")
        return completion(id_, created, value["text"], value["finish_reason"], usage(value))

    if allowed_hosts is not None:
        return HostCheck(app, allowed_hosts) if "*" not in allowed_hosts else app
    return app


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise MedtuneError(f"cannot resolve host '{host}': {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise MedtuneError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **limits) -> None:
    """Load the model, bind host:port (127.0.0.1 by default), and serve until Ctrl+C."""
    import uvicorn

    lim = Limits(**{k: v for k, v in limits.items() if v is not None})
    if lim.queue_size < 1 or lim.max_tokens < 1 or (lim.max_prompt_tokens is not None and lim.max_prompt_tokens < 1):
        raise MedtuneError("--queue-size, --max-tokens and --max-prompt-tokens must be >= 1")
    loopback = host in LOOPBACK or host.startswith("127.")
    sock = _listen(host, port)  # first: a busy port fails at once, before the model loads
    try:
        engine = Engine(model_dir, lim)
    except BaseException:
        sock.close()
        raise
    app = create_app(engine=engine, allowed_hosts=(LOOPBACK | {host}) if loopback else {"*"})
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"medtune: serving {engine.name} at http://{shown}:{bound}/  (API: POST /v1/completions; Ctrl+C stops)",
          flush=True)
    if not loopback:
        print(f"medtune: warning: listening on {host}, not loopback: the API has no authentication, anyone who can "
              "reach this port can use it", flush=True)
    print(NOTICE, flush=True)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
        sock.close()
