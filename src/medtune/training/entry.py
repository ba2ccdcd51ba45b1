"""`medtune train`'s one front door, for the CLI and for Python alike: it alone takes the output folder's lock,
installs the signal handlers, lets rank 0 alone speak, runs the checks that need no model (the output folder, the
data, this machine) and only then imports the ML stack (medtune.training.train), so that a refusal takes about a
second. A stop on a signal says how to resume."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from pathlib import Path

from medtune import data, rundir, stopping
from medtune.config import Config
from medtune.console import route_libraries
from medtune.validate import validate_machine

log = logging.getLogger("medtune.training")


def run(
    cfg: Config, resume: bool = False, checked: data.Checked | None = None, command: list[str] | None = None
) -> dict | None:
    """Train a LoRA adapter as configured; returns the final metrics, or None when --resume found the run finished
    (nothing is trained then). `command`: the command line as typed (named in the lock and in the resume hint).
    Every check runs before the first file is written: the config's (already, by load_config), the output folder's,
    the data's (`checked`: done already), the machine's, then the model's (medtune.validate). On SIGTERM, SIGINT or
    SIGUSR1 the current step ends with a checkpoint of it, and stopping.Stopped says where it is and how to resume."""
    out = Path(cfg.output_dir).expanduser()
    argv = command or ["medtune", "train", "--output-dir", str(out)]
    try:
        with (
            rundir.locked(out, shlex.join(argv), create=not resume),
            stopping.handlers(),
            _main_process_speaks(),
        ):
            if resume and _alone() and (done := rundir.finished_at(out, cfg.train.max_steps, cfg.train.epochs)):
                log.info(
                    f"resume: {out} finished already ({done[0]} of {done[1]} steps); nothing to train "
                    "(raise train.max_steps or train.epochs to train on)"
                )
                return None
            rundir.check_output(out, resume)
            checked = checked or data.load_checked(cfg.data)  # under torchrun, rank 0 alone speaks
            validate_machine(cfg)
            route_libraries()
            from medtune.training.train import fit

            return fit(cfg, out, resume, checked)
    except stopping.Stopped as e:
        if not (e.message and e.resumable):
            raise
        raise stopping.Stopped(e.signum, f"{e.message}; {resume_line(argv)}") from None
    except stopping.Interrupted as e:
        said = f"stopped at once by {stopping.name(e.signum)}"
        if out.is_dir() and rundir.holds_run(out):
            said += f"; the newest complete checkpoint is kept, {resume_line(argv)}"
        raise stopping.Stopped(e.signum, said) from None


def _alone() -> bool:
    """One process: several check the resume point together, in the recipe (a collective: each sees its own folder)."""
    return int(os.environ.get("WORLD_SIZE", "1")) == 1


def resume_line(argv: list[str]) -> str:
    argv = argv if "--resume" in argv else [*argv, "--resume"]
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return f"resume with: {shlex.join(argv)}" + (" (under the same launcher)" if several else "")


@contextlib.contextmanager
def _main_process_speaks():
    """Under torchrun, rank 0 alone speaks: the other ranks' medtune loggers show errors only meanwhile."""
    logger = logging.getLogger("medtune")
    before = logger.level
    if os.environ.get("RANK", "0") != "0":
        logger.setLevel(max(logging.ERROR, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)
