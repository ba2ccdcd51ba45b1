"""The run folder: one contract for what `medtune train` writes and every other command reads. Every file name of
it (and of the folders `medtune merge`, `medtune eval` and `medtune data audit` write) is named here, and only here.

A training run folder (every file written atomically):
  adapter_model.safetensors, adapter_config.json   the LoRA adapter (PEFT format)
  tokenizer files                                   so the folder alone is enough to generate
  base_model/                                       only for random:<name> bases (random weights are not on any hub)
  config.yaml, manifest.json, metrics.json, loss_curve.png
  splits/{validation,test}.jsonl                    held-out records, for `medtune eval`
  checkpoints/checkpoint-N/                         Trainer checkpoints (keep-limit), for --resume
  logs/                                             TensorBoard
  eval/                                             what `medtune eval` writes: metrics.json, report.md,
                                                    loss_curve.png, samples.jsonl
A merged model folder (`medtune merge`) holds config.json + model.safetensors (+ generation_config.json) + tokenizer
files instead of the adapter, plus config.yaml, manifest.json, metrics.json, eval_metrics.json (the run's
eval/metrics.json) and README.md (the model card).
An audit folder (`medtune data audit`) holds audit.json, audit.md, lengths.png and phi_review.json.

Every command that reads a run or merged folder goes through `open_run`; a missing, empty or corrupt file gives
the same one-line MedtuneError everywhere. Every command that writes into one holds its lock (`locked`,
.medtune.lock in the folder, or .NAME.medtune.lock beside a file: `lock_beside`) while it does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from medtune.config import Config, from_dict, read_yaml_mapping
from medtune.errors import MedtuneError
from medtune.files import STAGING
from medtune.validate import check_output_folder

log = logging.getLogger("medtune.rundir")

# a run folder
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
METRICS = "metrics.json"
LOSS_CURVE = "loss_curve.png"
SPLITS = "splits"
CHECKPOINTS = "checkpoints"
BASE_MODEL = "base_model"
EVAL = "eval"
LOGS = "logs"
RUN_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG, MANIFEST)
SPLIT_NAMES = ("test", "validation")
# eval/ (`medtune eval`): METRICS, LOSS_CURVE and
REPORT = "report.md"
SAMPLES = "samples.jsonl"
# a merged model folder (`medtune merge`): what transformers' save_pretrained writes, CONFIG, MANIFEST, METRICS and
MODEL_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_CARD = "README.md"
EVAL_METRICS = "eval_metrics.json"  # the run's eval/metrics.json
MERGED_COPIES = ((CONFIG, CONFIG), (MANIFEST, MANIFEST), (METRICS, METRICS), (f"{EVAL}/{METRICS}", EVAL_METRICS))
# an audit folder (`medtune data audit`)
AUDIT = "audit.json"
AUDIT_REPORT = "audit.md"
AUDIT_LENGTHS = "lengths.png"
PHI_REVIEW = "phi_review.json"


def split_path(run_path: Path, name: str) -> Path:
    """The held-out split `name` (test, validation) that training saved in the run folder."""
    return run_path / SPLITS / f"{name}.jsonl"


@dataclass
class RunFolder:
    path: Path
    kind: str  # "run" (base + adapter) or "merged" (a standalone model)
    config: Config

    @property
    def is_run(self) -> bool:
        return self.kind == "run"

    @property
    def base_model(self) -> Path | None:
        """The saved base (random:<name> runs), else None: the base is config.model.name."""
        d = self.path / BASE_MODEL
        return d if d.is_dir() else None

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL

    def split_file(self, name: str) -> Path:
        return split_path(self.path, name)

    @overload
    def read_json(self, name: str, required: Literal[True]) -> dict: ...
    @overload
    def read_json(self, name: str, required: bool = False) -> dict | None: ...

    def read_json(self, name: str, required: bool = False) -> dict | None:
        return read_json(self.path / name, required)


@overload
def read_json(path: Path, required: Literal[True]) -> dict: ...
@overload
def read_json(path: Path, required: bool = False) -> dict | None: ...


def read_json(path: Path, required: bool = False) -> dict | None:
    """A JSON object from `path`. Missing: None (or an error when required). Empty or corrupt: an error."""
    if not path.is_file():
        if required:
            raise MedtuneError(f"{path} not found")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{path} is empty or corrupt (not valid JSON: {str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise MedtuneError(f"{path} is corrupt: expected a JSON object")
    return data


def read_run_config(path: Path) -> Config:
    """A run's config.yaml as a Config (unknown keys, wrong types and corrupt YAML are one clear error)."""
    values = read_yaml_mapping(path, "run config")
    try:
        return from_dict(values)
    except MedtuneError as e:
        raise MedtuneError(f"{path}: {e}") from None


def open_run(path: str | Path, want: str = "any") -> RunFolder:
    """Open a run folder (want="run"), a merged model folder (want="merged") or either (want="any").
    A merged folder without config.yaml (a plain transformers model) gets the default config."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MedtuneError(f"folder not found: {path}")
    if not path.is_dir():
        raise MedtuneError(f"not a folder: {path}")
    if (path / ADAPTER_CONFIG).exists():
        kind = "run"
    elif (path / MODEL_CONFIG).exists():
        kind = "merged"
    else:
        raise MedtuneError(
            f"{path} holds neither an adapter ({ADAPTER_CONFIG}) nor a model ({MODEL_CONFIG}); "
            "give a `medtune train` output folder or a merged model folder"
        )
    if want == "run" and kind != "run":
        raise MedtuneError(
            f"{path} is a full model (config.json, no adapter): this command needs a "
            "`medtune train` output folder (base + adapter)"
        )
    if want == "merged" and kind != "merged":
        raise MedtuneError(f"{path} is a training run (adapter): this command needs a merged model folder")
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if kind == "run" else (MODEL_CONFIG,):
        f = path / name
        if f.exists() and f.stat().st_size == 0:
            raise MedtuneError(f"{f} is empty (an interrupted write?); retrain, or --resume the run")
    if kind == "run" and not (path / ADAPTER_WEIGHTS).exists():
        raise MedtuneError(f"{path} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}")
    cfg_file = path / CONFIG
    if kind == "run" or cfg_file.exists():
        config = read_run_config(cfg_file)
    else:
        config = Config()
    return RunFolder(path, kind, config)


# ---------------------------------------------------------------- checkpoints (--resume)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what Trainer._save_checkpoint writes and resume needs; trainer_state.json is written last
CHECKPOINT_FILES = (ADAPTER_WEIGHTS, "optimizer.pt", "scheduler.pt", "trainer_state.json")


def checkpoint_path(run_path: Path, step: int) -> Path:
    return run_path / CHECKPOINTS / f"checkpoint-{step}"


def checkpoints(run_path: Path) -> list[tuple[int, Path]]:
    """Every checkpoint-N folder of a run, oldest first."""
    d = run_path / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def _unreadable(f: Path) -> bool:
    """True when a checkpoint file does not load (truncated or corrupt)."""
    try:
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_tensor(key)
        elif f.suffix in (".pt", ".pth"):
            import torch

            torch.load(f, map_location="cpu", weights_only=False)
        else:
            state = json.loads(f.read_text(encoding="utf-8"))
            return not (isinstance(state, dict) and "global_step" in state)
    except Exception:
        return True
    return False


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a checkpoint cannot be resumed from (a missing, empty or unreadable file), or None."""
    files = [ckpt / name for name in CHECKPOINT_FILES]
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng:
        return "rng_state.pth missing"
    for f in files + rng:
        if not f.is_file():
            return f"{f.name} missing"
        if f.stat().st_size == 0:
            return f"{f.name} is empty"
        if _unreadable(f):
            return f"{f.name} is corrupt"
    return None


def latest_complete_checkpoint(run_path: Path, tidy: bool = True) -> Path | None:
    """The newest checkpoint that holds everything resume needs. Incomplete ones newer than it (an interrupted save)
    are named and removed (`tidy`: by the main process only): they cannot be resumed from, and would confuse the
    Trainer's checkpoint rotation."""
    for _step, ckpt in reversed(checkpoints(run_path)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        if tidy:
            log.info(f"resume: removing incomplete {ckpt.name} ({problem})")
            shutil.rmtree(ckpt, ignore_errors=True)
    return None


def finished_at(run_path: Path, max_steps: int, epochs: float) -> tuple[int, int] | None:
    """(step, of) when `run_path` holds a finished run (its adapter and metrics written, its newest complete
    checkpoint at the last step) that the given train.max_steps / train.epochs would not lengthen: --resume has
    nothing to train there. None otherwise."""
    if not ((run_path / METRICS).is_file() and (run_path / ADAPTER_WEIGHTS).is_file()):
        return None
    ckpt = latest_complete_checkpoint(run_path, tidy=False)
    state = read_json(ckpt / "trainer_state.json") if ckpt else None
    if not state or state.get("global_step", 0) < state.get("max_steps", 0):
        return None
    step, of = state["global_step"], state["max_steps"]
    longer = max_steps > step if max_steps > 0 else epochs > state.get("num_train_epochs", epochs)
    return None if longer else (step, of)


def clean_staging(run_path: Path) -> None:
    """Remove `.staging-*` folders an interrupted write left behind."""
    if run_path.is_dir():
        for p in run_path.glob(f"{STAGING}*"):
            shutil.rmtree(p, ignore_errors=True)


def holds_run(path: Path) -> bool:
    return any((path / f).exists() for f in RUN_FILES) or (path / CHECKPOINTS).exists()


def check_output(out: Path, resume: bool) -> None:
    """The checks of the output folder that read nothing but its listing (prepare_output runs them too)."""
    check_output_folder(out, "output dir")
    if not resume and out.exists() and holds_run(out):
        raise MedtuneError(
            f"output dir {out} already holds a run; pass --resume to continue it, "
            "or choose another --output-dir (nothing was overwritten)"
        )
    if resume and not out.is_dir():
        raise MedtuneError(f"--resume: output dir {out} not found")


def prepare_output(out: Path, resume: bool, tidy: bool = True) -> Path | None:
    """Check the output folder before anything is written; returns the checkpoint to resume from, or None.
    Without --resume the folder must not hold a run. With --resume, the newest complete checkpoint is used; a run
    that has none (it failed before its first checkpoint) starts over in the same folder, saying so. `tidy`: remove
    incomplete checkpoints (false on the helper ranks of a multi-process run, which do not hold the folder's lock)."""
    check_output(out, resume)
    if not resume:
        return None
    ckpt = latest_complete_checkpoint(out, tidy)
    if ckpt is None:
        if (out / ADAPTER_WEIGHTS).exists() and not checkpoints(out):
            raise MedtuneError(f"--resume: {out} holds a finished run with no checkpoint to continue from")
        log.info(f"resume: no complete checkpoint in {out / CHECKPOINTS}; starting over")
    return ckpt


# ---------------------------------------------------------------- one command per folder

LOCK = ".medtune.lock"
_HELD: dict[str, int] = {}  # lock files this process holds -> their file descriptors


def lock_beside(file: Path) -> Path:
    """The lock file of a file being written (not a folder): .NAME.medtune.lock beside it."""
    return file.with_name(f".{file.name}{LOCK}")


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, /proc), to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def lock_info(file: Path) -> dict:
    """What a lock file says of its holder (pid, host, start, command, since); {} when empty or unreadable."""
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def holder_runs(info: dict) -> bool:
    """Whether the process a lock file names still runs, by its PID, host and start time (one on another host is
    assumed to run). The fallback where the file system has no flock."""
    pid = info.get("pid")
    if not isinstance(pid, int):
        return False
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    return info.get("start") in (None, _process_start(pid))


def _flock(fd: int, file: Path) -> bool:
    """Lock the open `file`; False when another process holds it. The kernel releases a flock when its holder
    exits, however it exits; where the file system has no flock, the PID and host in the file decide."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return not holder_runs(lock_info(file))


def _holder_info(file: Path, wait_s: float = 1.0) -> dict:
    """The holder's lock info; a holder that has just taken the lock writes it a moment later."""
    deadline = time.monotonic() + wait_s
    while not (info := lock_info(file)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return info


def _take(file: Path, command: str) -> tuple[int | None, dict]:
    """Take the lock file: (its descriptor, what it said before: a holder that died) or (None, its holder)."""
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock(fd, file):
            os.close(fd)
            return None, _holder_info(file)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(file)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we opened it: take the new one
    before = lock_info(file)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _process_start(os.getpid()),
        "command": command[:300],
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    return fd, before


def describe_holder(info: dict) -> str:
    if not isinstance(info.get("pid"), int):
        return "another medtune process"
    where = f"pid {info['pid']} on {info.get('host', '?')}, since {info.get('since', '?')}"
    return f"`{info['command']}` ({where})" if info.get("command") else f"medtune ({where})"


@contextlib.contextmanager
def locked(target: str | Path, command: str, create: bool = False, lock_file: Path | None = None):
    """Hold the lock of `target` for the duration: `target`/.medtune.lock for a folder (a run, a merged model), or
    `lock_file` (beside a file being written). While one command holds it, another is refused with one line naming
    the holder. Take it before writing anything; it is released on any exit (even SIGKILL: the file then left
    behind names a process that no longer runs, and the next command takes it over, saying so). Re-entrant within a
    process; only the main process of a multi-process launch (RANK 0) takes it. `create`: make a missing folder
    (removed again if it is left empty); without it, a missing target is not locked (the command reports it)."""
    target = Path(target).expanduser()
    file = Path(lock_file) if lock_file else target / LOCK
    key = str(file.absolute())
    if key in _HELD or os.environ.get("RANK", "0") != "0":
        yield
        return
    made = False
    if create and lock_file is None and not target.exists():
        with contextlib.suppress(FileExistsError):
            target.mkdir(parents=True)
            made = True
    if not file.parent.is_dir():
        yield
        return
    fd, before = _take(file, command)
    if fd is None:
        if made:
            with contextlib.suppress(OSError):
                target.rmdir()
        raise MedtuneError(f"{target} is in use by {describe_holder(before)}; wait for it to end, or stop it first")
    if before.get("pid") not in (None, os.getpid()):
        log.info(f"{target}: taking over the lock of {describe_holder(before)}, which no longer runs")
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(file)
        os.close(fd)
        if made:
            with contextlib.suppress(OSError):
                target.rmdir()  # only if nothing was written into it
