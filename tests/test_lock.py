"""One command per folder (rundir.locked): two `medtune train` on one output folder, one is refused in one line naming
the other, and the folder holds one run; a lock left by a killed process is taken over; where the file system has no
flock, the PID, host and start time in the lock file decide."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import yaml

from medtune import rundir
from medtune.errors import MedtuneError

HOLD = (
    "import sys, time\nfrom medtune import rundir\n"
    "held = rundir.locked(sys.argv[1], 'medtune train --output-dir ' + sys.argv[1])\nheld.__enter__()\n"
    "print('locked', flush=True)\ntime.sleep(120)\n"
)


@pytest.fixture
def holder(tmp_path):
    """A function: (folder) -> a live subprocess holding the folder's lock (killed at the end of the test)."""
    procs = []

    def hold(folder):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


def test_two_trains_on_one_folder_one_is_refused(tmp_path, tiny_preset):
    out = tmp_path / "run"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    sets = [
        "train.max_steps=4",
        "train.save_steps=2",
        "train.eval_steps=2",
        "train.logging_steps=1",
        "train.report_to=none",
        "data.max_records=40",
    ]

    def start(seed):
        args = ["train", "--config", str(tiny_preset), "--output-dir", str(out), "--set", f"train.seed={seed}"]
        return subprocess.Popen(
            [sys.executable, "-m", "medtune", *args, *[a for s in sets for a in ("--set", s)]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    procs = {1: start(1), 2: start(2)}  # at once
    done = {seed: (p, *p.communicate(timeout=600)) for seed, p in procs.items()}
    assert sorted(p.returncode for p, _, _ in done.values()) == [0, 2]
    ((seed, (winner, _, _)),) = [(s, d) for s, d in done.items() if d[0].returncode == 0]
    ((_, err),) = [(d[1], d[2]) for d in done.values() if d[0].returncode == 2]
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err  # one line
    assert (
        err.startswith(f"medtune: error: {out} is in use by `medtune train --config ")
        and f"(pid {winner.pid} on {socket.gethostname()}, since " in err
    ), err
    # the folder holds the winner's run alone: its config, one sequence of steps, no lock left
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == seed
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / rundir.LOCK).exists()


def test_lock_of_a_killed_process_is_taken_over(tmp_path, holder, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    p = holder(folder)
    with pytest.raises(MedtuneError, match=rf"in use by `medtune train --output-dir .*` \(pid {p.pid} on "):
        with rundir.locked(folder, "medtune eval"):
            pass
    p.kill()  # SIGKILL: no cleanup; the lock file stays, naming a process that no longer runs
    p.wait()
    assert rundir.lock_info(folder / rundir.LOCK)["pid"] == p.pid
    caplog.set_level(logging.INFO, logger="medtune.rundir")
    with rundir.locked(folder, "medtune eval"):
        assert rundir.lock_info(folder / rundir.LOCK)["pid"] == os.getpid()
        with rundir.locked(folder, "medtune eval"):  # re-entrant within a process
            pass
        assert (folder / rundir.LOCK).exists()
    said = [r.getMessage() for r in caplog.records if r.name == "medtune.rundir"]
    assert len(said) == 1 and f"(pid {p.pid} on " in said[0] and said[0].endswith("which no longer runs")
    assert not (folder / rundir.LOCK).exists() and folder.is_dir()


def test_lock_makes_the_folder_and_removes_it_when_nothing_was_written(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(MedtuneError, match="bad data"):
        with rundir.locked(out, "medtune train", create=True):
            assert (out / rundir.LOCK).is_file()
            raise MedtuneError("bad data")
    assert not out.exists()
    with rundir.locked(tmp_path / "missing", "medtune eval"):  # without create: not made, not locked
        pass
    assert not (tmp_path / "missing").exists()


def test_without_flock_pid_host_and_start_time_decide(tmp_path, monkeypatch, holder):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(rundir.fcntl, "flock", no_flock)  # as on a network file system without locks
    live = holder(tmp_path / "other")  # a process that runs (its own lock is elsewhere)
    folder = tmp_path / "run"
    folder.mkdir()
    here = socket.gethostname()
    cases = [
        ({"pid": live.pid, "host": here, "start": rundir._process_start(live.pid)}, True),
        ({"pid": live.pid, "host": here, "start": "1"}, False),  # its pid, but a later process: reused
        ({"pid": live.pid, "host": "node-7"}, True),  # another host: cannot tell, assumed to run
        ({"pid": 2**22 + 1, "host": here}, False),
    ]  # no such process
    for info, runs in cases:
        (folder / rundir.LOCK).write_text(json.dumps(info))
        if runs:
            with pytest.raises(MedtuneError, match=f"pid {info['pid']} on {info['host']}"):
                with rundir.locked(folder, "medtune eval"):
                    pass
        else:
            with rundir.locked(folder, "medtune eval"):
                assert rundir.lock_info(folder / rundir.LOCK)["pid"] == os.getpid()
