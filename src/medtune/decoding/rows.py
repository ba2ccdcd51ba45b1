"""What the engine keeps on the host for each running answer: its tokens, the loop guard, the streamed text."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoopGuard:
    """Stops an answer whose last `window` tokens only repeat 4-grams it already wrote, and cuts the repetition.

    `run` counts the trailing 4-grams that each occurred earlier in the answer. A looping answer ("A B C D E A B C D
    E ...") keeps adding such 4-grams; ordinary text rarely has more than a few in a row. When the run covers the
    window, the answer is cut where the run began: the first occurrence of the repeated text stays, its copies go."""
    window: int  # 0: off
    seen: set = field(default_factory=set)
    run: int = 0

    def add(self, tokens: list[int]) -> int | None:
        """Update with the answer so far (the newest token last); the length to cut it to once it loops, else None."""
        if self.window <= 0 or len(tokens) < 4:
            return None
        gram = tuple(tokens[-4:])
        self.run = self.run + 1 if gram in self.seen else 0
        self.seen.add(gram)
        if self.run + 3 >= self.window:
            return len(tokens) - self.run - 3
        return None

    @property
    def held(self) -> int:
        """Trailing tokens that may yet be cut (streamed once they cannot be: 3 tokens behind, or until a repetition
        breaks off)."""
        return self.run + 3 if self.window > 0 else 0


class TextStream:
    """Incremental detokenization for streaming: each call returns only the new text, decoding a short window of
    recent tokens (not the whole answer: that would cost O(n^2) per answer), and holds back an incomplete UTF-8
    character until its last byte arrives."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.prefix = 0  # window start
        self.read = 0    # tokens whose text was already sent
        self.sent = ""

    def feed(self, tokens: list[int], upto: int) -> str:
        if upto <= self.read:
            return ""
        before = self.tok.decode(tokens[self.prefix:self.read], skip_special_tokens=True)
        text = self.tok.decode(tokens[self.prefix:upto], skip_special_tokens=True)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, upto
        return text[len(before):]


@dataclass
class Row:
    """One running request: what it asked for and what it has so far."""
    request: object            # medtune.generate.Request
    seed: int
    guard: LoopGuard
    stream: TextStream | None
    prompt_len: int = 0
    tokens: list[int] = field(default_factory=list)  # the answer's tokens (EOS excluded)
    reason: str | None = None  # set when it stops: eos, length, loop, cancelled
    cut: int | None = None     # the loop guard's cut
    shown: str = ""            # text streamed so far

    def emit_text(self, final: bool = False) -> None:
        if self.stream is None:
            return
        upto = len(self.tokens) if final else len(self.tokens) - self.guard.held
        piece = self.stream.feed(self.tokens, upto)
        if piece:
            if not self.shown:
                piece = piece.lstrip()  # the final text is stripped too
            if piece:
                self.shown += piece
                self.request.on_text(piece)
