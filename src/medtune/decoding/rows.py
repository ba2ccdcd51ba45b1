"""What the engine keeps on the host for each running answer (a Row: the sequence, in vLLM's words): its tokens,
the loop guard, the streamed text, and the host's side of each step (a new token, the stop checks, the Completion)."""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass, field

from medtune.decoding.request import Completion, Request


@dataclass
class LoopGuard:
    """Stops an answer once half of the 4-grams that start in its last `window` tokens repeat 4-grams it already
    wrote, and cuts it before the first of those repeats.

    A looping answer ("A B C D E A B C D E ...", or the same phrase with small variations) fills the window with
    repeated 4-grams; ordinary text has a few percent (reference answers: 1.3%). The cut keeps the first occurrence
    of the repeated text and drops its copies."""

    window: int  # 0: off
    seen: set = field(default_factory=set)
    repeats: collections.deque = field(default_factory=collections.deque)  # starts of repeated 4-grams in the window
    n: int = 0

    def add(self, tokens: list[int]) -> int | None:
        """Update with the answer so far (the newest token last); the length to cut it to once it loops, else None."""
        self.n = len(tokens)
        if self.window <= 0 or self.n < 4:
            return None
        start = self.n - 4
        gram = tuple(tokens[start:])
        if gram in self.seen:
            self.repeats.append(start)
        self.seen.add(gram)
        while self.repeats and self.repeats[0] <= start - self.window:
            self.repeats.popleft()
        if 2 * len(self.repeats) >= self.window:
            return self.repeats[0]
        return None

    @property
    def held(self) -> int:
        """Trailing tokens that a cut could still remove (streamed only once it cannot)."""
        if self.window <= 0:
            return 0
        return self.n - self.repeats[0] if self.repeats else min(3, self.n)


class TextStream:
    """Incremental detokenization for streaming: each call returns only the new text, decoding a short window of
    recent tokens (not the whole answer: that would cost O(n^2) per answer), and holds back an incomplete UTF-8
    character until its last byte arrives."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.prefix = 0  # window start
        self.read = 0  # tokens whose text was already sent
        self.sent = ""

    def feed(self, tokens: list[int], upto: int) -> str:
        if upto <= self.read:
            return ""
        before = self.tok.decode(tokens[self.prefix : self.read], skip_special_tokens=True)
        text = self.tok.decode(tokens[self.prefix : upto], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, upto
        return text[len(before) :]


@dataclass
class Row:
    """One running request: what it asked for and what it has so far."""

    request: Request
    seed: int
    guard: LoopGuard
    stream: TextStream | None
    tokens: list[int] = field(default_factory=list)  # the answer's tokens (EOS excluded)
    reason: str | None = None  # set when it stops: eos, length, loop, cancelled
    done: bool = False  # answered (on_done called); its slot is freed at the next admission
    shown: str = ""  # text streamed so far

    @classmethod
    def start(cls, request: Request, tokenizer) -> "Row":
        """A request joining the running batch: its seed (drawn when it names none) and its text stream."""
        seed = request.g.seed if request.g.seed is not None else random.getrandbits(62)
        stream = TextStream(tokenizer) if request.on_text is not None else None
        return cls(request, seed, LoopGuard(request.g.loop_guard), stream)

    @property
    def prompt_len(self) -> int:
        return len(self.request.ids)

    @property
    def length(self) -> int:
        """Positions its slot uses: the prompt, the answer so far, and the token about to be fed."""
        return self.prompt_len + len(self.tokens) + 1

    def emit_text(self, final: bool = False) -> None:
        if self.stream is None or self.request.on_text is None:  # (a stream exists only for a request with on_text)
            return
        upto = len(self.tokens) if final else len(self.tokens) - self.guard.held
        piece = self.stream.feed(self.tokens, upto)
        if piece:
            if not self.shown:
                piece = piece.lstrip()  # the final text is stripped too
            if piece:
                self.shown += piece
                self.request.on_text(piece)

    def take(self, token: int, eos: int | None, max_len: int) -> bool:
        """One new token from the device: EOS ends the answer (False: no token added); the loop guard (the answer
        is cut before the repeat), cancellation, max_new_tokens and the end of the slot end it after this token."""
        r = self.request
        if token == eos:
            self.reason = "eos"
            return False
        self.tokens.append(token)
        cut = self.guard.add(self.tokens)
        if cut is not None:
            del self.tokens[cut:]
            self.reason = "loop"
        elif r.cancel is not None and r.cancel.is_set():
            self.reason = "cancelled"
        elif len(self.tokens) >= r.g.max_new_tokens or self.prompt_len + len(self.tokens) >= max_len:
            self.reason = "length"
        return True

    def finish(self, tokenizer) -> None:
        """Answer the request (on_done) with its Completion, the rest of its streamed text first."""
        r = self.request
        assert self.reason is not None  # every row that finishes has its reason
        self.done = True
        text = tokenizer.decode(self.tokens, skip_special_tokens=True).strip()
        if self.stream is not None and self.reason != "cancelled":
            self.emit_text(final=True)
        if r.on_done is not None:
            r.on_done(Completion(text, list(self.tokens), self.reason, len(r.ids)))
