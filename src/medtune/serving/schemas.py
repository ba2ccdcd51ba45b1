"""Request and error shapes of the HTTP API: OpenAI's completions and chat completions (plus medtune's `raw`).
Both requests share their sampling fields and are checked by one path: pydantic for types and ranges, then
`chat_turns` for the messages of a chat request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from medtune.config import GenerateConfig, bounds

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

MAX_STOPS = 4  # stop strings per request (as OpenAI)
MAX_STOP_CHARS = 256  # characters per stop string (each streamed piece is checked against every prefix)
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}  # developer: OpenAI's
MESSAGE_FIELDS = ("role", "content", "name")  # newer name for system


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _bounded(name: str, **extra) -> Any:
    """An optional request field with the bounds of generate.NAME in the config."""
    return Field(None, **bounds(GenerateConfig, name), **extra)


class GenerationRequest(BaseModel):
    """The fields every generation request shares."""

    model_config = ConfigDict(extra="forbid", strict=True)
    max_tokens: int | None = Field(None, ge=1)
    # the bounds of the config's generate section (one bound for each setting, wherever it is checked)
    temperature: float | None = _bounded("temperature", allow_inf_nan=False)
    top_p: float | None = _bounded("top_p", allow_inf_nan=False)
    stream: bool = False
    seed: int | None = _bounded("seed")
    stop: str | list[str] | None = None  # the answer ends before the first of these strings
    model: str | None = None  # accepted for OpenAI clients; there is one model
    n: int = Field(1, ge=1, le=1)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"{len(stops)} strings; at most {MAX_STOPS} are allowed")
        if not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(f"every stop string must be 1 to {MAX_STOP_CHARS} characters long")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([self.stop] if isinstance(self.stop, str) else self.stop or []))

    def new_tokens(self) -> int | None:
        return self.max_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    raw: bool = False  # medtune extension: send the prompt as-is, without the run's prompt template


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class ChatRequest(GenerationRequest):
    messages: list[dict]
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens
    stream_options: StreamOptions | None = None

    def new_tokens(self) -> int | None:
        a, b = self.max_tokens, self.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise ApiError(
                400,
                f"'max_tokens' ({a}) and 'max_completion_tokens' ({b}) differ; send one of them",
                param="max_completion_tokens",
            )
        return b if b is not None else a


FIELD_TYPES = {
    "prompt": "a string",
    "messages": 'a list of messages, each {"role", "content"}',
    "max_tokens": "an integer",
    "max_completion_tokens": "an integer",
    "temperature": "a number",
    "top_p": "a number",
    "stream": "true or false",
    "seed": "an integer",
    "stop": "a string or a list of strings",
    "raw": "true or false",
    "model": "a string",
    "n": "an integer",
    "user": "a string",
    "stream_options": 'an object such as {"include_usage": true}',
}


def validation_message(
    errors: Sequence[ErrorDetails], schema: type[BaseModel] = CompletionRequest
) -> tuple[str, str | None]:
    """One readable line (and the field) for the first of pydantic's validation errors."""
    e = errors[0]
    loc: tuple[int | str, ...] = e.get("loc") or ()
    name = str(loc[0]) if loc else None
    if name == "stream_options" and len(loc) == 2:  # a field inside it
        if e["type"] == "extra_forbidden":
            return f"unknown field '{loc[1]}' in 'stream_options' (accepted: include_usage)", name
        return "'stream_options.include_usage' must be true or false", name
    if e["type"] == "extra_forbidden":
        return f"unknown field '{name}' (accepted: {', '.join(schema.model_fields)})", name
    if e["type"] == "missing":
        return f"'{name}' is required", name
    if name == "n":
        return "only n=1 is supported", name
    if e["type"].endswith("_type") or e["type"] in ("list_type", "string_type"):
        want = FIELD_TYPES.get(name or "", "of another type")
        if name == "prompt":
            want += " (or a list holding one string)"
        return f"'{name}' must be {want}", name
    if e["type"] == "value_error":  # our own validators' message
        return f"'{name}': {e['ctx']['error']}", name
    return f"'{name}': {e['msg']}", name


def _shown(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _content(value, where: str) -> str:
    """A message's text: a string, or a list of text parts ({"type": "text", "text": ...}, joined by newlines)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        if all(p.get("type") == "text" and isinstance(p.get("text"), str) and len(p) == 2 for p in value):
            return "\n".join(p["text"] for p in value)
        raise ApiError(
            400, f'\'{where}\': only text parts ({{"type": "text", "text": ...}}) are supported', param=where
        )
    raise ApiError(400, f"'{where}' must be a string (or a list of text parts)", param=where)


def chat_turns(messages: list[dict]) -> list[dict]:
    """A chat request's messages as turns {role, content} with medtune's role names (system, user, assistant); the
    last one must be a user turn with text: the reply is the assistant's next turn."""
    if not messages:
        raise ApiError(400, "'messages' must not be empty", param="messages")
    turns = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        extra = [k for k in m if k not in MESSAGE_FIELDS]
        if extra:
            raise ApiError(
                400, f"unknown field '{extra[0]}' in '{where}' (accepted: {', '.join(MESSAGE_FIELDS)})", param=where
            )
        if "role" not in m:
            raise ApiError(400, f"'{where}.role' is required", param=f"{where}.role")
        if not isinstance(m["role"], str) or m["role"] not in ROLES:
            raise ApiError(
                400,
                f"'{where}.role' is {_shown(m['role'])}; the roles are system, user and assistant",
                param=f"{where}.role",
            )
        if "content" not in m:
            raise ApiError(400, f"'{where}.content' is required", param=f"{where}.content")
        if m.get("name") is not None and not isinstance(m["name"], str):
            raise ApiError(400, f"'{where}.name' must be a string", param=f"{where}.name")
        turns.append({"role": ROLES[m["role"]], "content": _content(m["content"], f"{where}.content")})
    last = f"messages[{len(turns) - 1}]"
    if turns[-1]["role"] != "user":
        raise ApiError(
            400,
            f"the last message must be a user message, not {turns[-1]['role']}: the reply is the assistant's next turn",
            param=f"{last}.role",
        )
    if not turns[-1]["content"].strip():
        raise ApiError(400, f"'{last}.content' must not be empty", param=f"{last}.content")
    return turns


def _reject_constant(value: str):
    raise ValueError(f"{value} is not valid JSON")


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object (NaN/Infinity, invalid UTF-8 and deep nesting are refused)."""
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON object")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data
