"""Stopping on a signal: SIGTERM (`kill`, a scheduler's preemption), SIGINT (Ctrl+C) and SIGUSR1 (SLURM's warning
before a job's time runs out, `#SBATCH --signal=USR1@120`).

Inside a `graceful()` section (training) the first signal only records a request; the Trainer polls it once per
optimizer step (medtune.training.trainer.StopOnSignal), finishes that step, saves a complete checkpoint of it and
returns, and the command raises `Stopped`. Outside such a section, or on a second Ctrl+C, the handler raises
`Interrupted` at once (a KeyboardInterrupt: `finally` blocks and atomic writes still clean up). Either way the CLI
prints one line and exits with 128 + the signal number: 130 (SIGINT), 143 (SIGTERM), 138 (SIGUSR1).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
REPEAT_S = 1.0  # a Ctrl+C this soon after the first is the same one delivered twice (a launcher forwarding it)


class Interrupted(KeyboardInterrupt):
    """Stopped at once by signal `signum`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Stopped(Exception):
    """The command stopped cleanly on signal `signum`; its message is the one line to print (None: print nothing,
    e.g. on the helper processes of a multi-process run); `resumable`: `train --resume` continues it."""

    def __init__(self, signum: int, message: str | None, resumable: bool = True):
        super().__init__(message)
        self.signum, self.message, self.resumable = signum, message, resumable


@dataclass
class _State:
    graceful: bool = False  # inside a section that stops cleanly
    signum: int = 0  # the signal that asked for a clean stop there; 0: none
    at: float = 0.0  # when (time.monotonic)


_state = _State()


def name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    return 128 + signum


def requested() -> int:
    """The signal that asked the current graceful section to stop, or 0."""
    return _state.signum


def _say(text: str) -> None:
    """A line of its own on stderr (after a progress bar's). Not print(): the handler may interrupt a write to
    stderr."""
    os.write(2, f"\nmedtune: {text}\n".encode())


def _handler(signum, frame) -> None:
    if not _state.graceful:
        raise Interrupted(signum)
    if not _state.signum:
        _state.signum, _state.at = signum, time.monotonic()
        _say(
            f"{name(signum)} received: finishing the current step and saving a checkpoint of it "
            "(Ctrl+C again to stop at once)"
        )
    elif signum == signal.SIGINT and time.monotonic() - _state.at > REPEAT_S:
        raise Interrupted(signum)
    # else: SIGTERM / SIGUSR1 again, or the same Ctrl+C twice: already stopping


@contextlib.contextmanager
def handlers():
    """medtune's handler for SIGNALS for the duration, the previous ones restored after (a no-op outside the main
    thread, where Python cannot set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def graceful():
    """A section that stops cleanly: the first signal sets requested() instead of interrupting."""
    _state.graceful, _state.signum = True, 0
    try:
        yield
    finally:
        _state.graceful = False
