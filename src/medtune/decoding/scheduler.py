"""Which requests run, and in which slots: the queue of waiting requests, the running rows (kept in slots 0..n-1),
when requests join (admission) and ended rows leave (retirement), and the buckets (rows x positions) that a decode
step or a prefill runs in. Host-side bookkeeping only: the model runner moves what lives on the device."""

from __future__ import annotations

import collections
import threading

from medtune.decoding.request import Request
from medtune.decoding.rows import Row

WIDTH_STEP = 128  # decode attends over a multiple of this many positions (fewer graphs, little waste)
PREFILL_TOKENS = 16_384  # prompt tokens prefilled per step at most (running rows wait for one prefill only)
PREFILL_GRAPH_ROWS = 16  # prefills of up to this many prompts ...
PREFILL_GRAPH_WIDTH = 512  # ... of up to this many tokens run as CUDA graphs (bucketed); larger ones eagerly
# Requests join (prefill) and ended rows leave (slot compaction) every this many steps, not every step: on the
# H200 a step that admits costs about twice a plain one (SmolLM2-135M, 128 rows: 7.1 against 3.4 ms), so a server
# under load would spend half its time admitting one request a step. A request waits at most this many steps.
ADMIT_EVERY = 4


def pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_bucket(rows: list[Row], slots: int, max_len: int) -> tuple[int, int]:
    """The (batch rows, positions) of a decode step over `rows`: the smallest power of 2 of rows that holds them,
    over the shortest multiple of WIDTH_STEP positions that holds their tokens."""
    longest = max(row.length for row in rows) + 1  # + 1: the step still in flight
    return min(pow2(len(rows)), slots), min(max_len, -(-longest // WIDTH_STEP) * WIDTH_STEP)


def prefill_groups(lens: list[int], max_len: int, graphs: bool) -> list[slice]:
    """The prompts joining at once, in groups of up to PREFILL_GRAPH_ROWS when they would all fit a prefill graph
    (a few replays cost less than one eager prefill's hundreds of launches); else one group."""
    b = len(lens)
    if graphs and b > PREFILL_GRAPH_ROWS and max(lens) <= min(PREFILL_GRAPH_WIDTH, max_len):
        return [slice(k, k + PREFILL_GRAPH_ROWS) for k in range(0, b, PREFILL_GRAPH_ROWS)]
    return [slice(0, b)]


def prefill_bucket(lens: list[int], max_len: int, graphs: bool) -> tuple[int, int, bool]:
    """(rows, width, as a graph) of one prefill: a power of 2 of rows and a multiple of 64 tokens when it runs as a
    CUDA graph, else the prompts' own shape."""
    bb, wb = pow2(len(lens)), min(-(-max(lens) // 64) * 64, max_len)
    if graphs and bb <= PREFILL_GRAPH_ROWS and wb <= min(PREFILL_GRAPH_WIDTH, max_len):
        return bb, wb, True
    return len(lens), max(lens), False


class Scheduler:
    """The waiting requests and the running rows. `add` may be called from any thread, the rest from the engine's."""

    def __init__(self, slots: int):
        self.slots = slots
        self.rows: list[Row] = []  # row i runs in slot i
        self.waiting: collections.deque = collections.deque()
        self.lock = threading.Lock()
        self.since_admission = 0

    def add(self, request: Request) -> None:
        with self.lock:
            self.waiting.append(request)

    def admits_now(self) -> bool:
        """Count a step; True when it admits (every ADMIT_EVERY steps while some row waits or ended; at once when
        nothing runs)."""
        live = sum(not row.reason for row in self.rows)
        if live == 0:
            due = bool(self.rows or self.waiting)
        elif live == len(self.rows) and not self.waiting:
            due = False
        else:
            due = self.since_admission >= ADMIT_EVERY
        if due:
            self.since_admission = 0
        self.since_admission += 1
        return due

    def take_waiting(self) -> list[Request]:
        """The waiting requests that join now: as many as free slots hold, within PREFILL_TOKENS prompt tokens."""
        take: list[Request] = []
        budget = PREFILL_TOKENS
        with self.lock:
            while self.waiting and len(self.rows) + len(take) < self.slots:
                r = self.waiting[0]
                if take and len(r.ids) > budget:
                    break
                budget -= len(r.ids)
                take.append(self.waiting.popleft())
        return take

    def retire(self) -> tuple[list[int], list[int], int] | None:
        """Drop the rows that ended (already answered); the live rows beyond the live count move into the holes they
        left. Returns those slot moves (src, dst) and the positions they use, or None when no row ended."""
        if not any(row.reason for row in self.rows):
            return None
        n = sum(not row.reason for row in self.rows)
        holes = [i for i in range(n) if self.rows[i].reason]  # each filled by a live row from beyond n
        tail = [i for i in range(n, len(self.rows)) if not self.rows[i].reason]
        width = max((self.rows[k].length for k in tail), default=0) + 1  # + 1: a step may be in flight
        for k, j in zip(tail, holes):
            self.rows[j] = self.rows[k]
        del self.rows[n:]
        return tail, holes, width

    def drop_all(self) -> list[Request]:
        """Every running (unanswered) and waiting request, removed."""
        with self.lock:
            dropped = [row.request for row in self.rows if not row.done] + list(self.waiting)
            self.waiting.clear()
        self.rows = []
        return dropped
