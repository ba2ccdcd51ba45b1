"""Request and error shapes of the HTTP API (OpenAI's completions API, plus medtune's `raw`)."""
from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


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


FIELD_TYPES = {"prompt": "a string", "max_tokens": "an integer", "temperature": "a number", "top_p": "a number",
               "stream": "true or false", "seed": "an integer", "raw": "true or false", "model": "a string",
               "n": "an integer", "user": "a string"}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line (and the field) for the first of pydantic's validation errors."""
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


def parse_json_object(body: bytes) -> dict:
    """The request body as a JSON object (NaN/Infinity, invalid UTF-8 and deep nesting are refused)."""
    if not body.strip():
        raise ApiError(400, "request body is empty; send a JSON object with a 'prompt'")
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data
