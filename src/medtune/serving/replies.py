"""The JSON objects of a reply in OpenAI's two shapes, a text completion (/v1/completions) and a chat completion
(/v1/chat/completions), whole or as the chunks of a stream. Every reply carries medtune's `notice`: a whole one, and
the first and the last chunk of a stream."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from medtune.notice import NOTICE


def _new_id(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


@dataclass
class Reply:
    model: str
    chat: bool
    usage_chunk: bool = False  # chat stream: usage in a chunk of its own, before [DONE] (stream_options.include_usage)
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    noticed: bool = False  # a chunk with the notice went out

    def __post_init__(self):
        self.id = self.id or _new_id(self.chat)

    def _obj(self, kind: str, choices: list, usage=None, notice: bool = True) -> dict:
        obj = {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}
        if usage is not None or (self.usage_chunk and kind.endswith("chunk")):  # OpenAI: null on the other chunks
            obj["usage"] = usage
        if notice:
            obj["notice"] = NOTICE
        return obj

    def _choice(self, text: str, finish: str | None, stream: bool) -> dict:
        if not self.chat:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        if stream:
            return {"index": 0, "delta": {"content": text} if text else {}, "logprobs": None, "finish_reason": finish}
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }

    def whole(self, text: str, finish: str, usage: dict) -> dict:
        return self._obj(
            "chat.completion" if self.chat else "text_completion", [self._choice(text, finish, False)], usage
        )

    def _chunk(self, choices: list, usage=None, last: bool = False) -> dict:
        notice, self.noticed = last or not self.noticed, True
        return self._obj("chat.completion.chunk" if self.chat else "text_completion", choices, usage, notice)

    def opening(self) -> list[dict]:
        """Chunks before the answer's text: a chat stream's first says who speaks."""
        if not self.chat:
            return []
        return [
            self._chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
            )
        ]

    def piece(self, text: str) -> dict:
        return self._chunk([self._choice(text, None, True)])

    def ending(self, finish: str, usage: dict) -> list[dict]:
        """The chunk with the finish reason (text completions: with the usage), and a chat stream's usage chunk."""
        if not self.chat:
            return [self._chunk([self._choice("", finish, True)], usage, last=True)]
        end = self._chunk([self._choice("", finish, True)], last=not self.usage_chunk)
        return [end, self._chunk([], usage, last=True)] if self.usage_chunk else [end]
