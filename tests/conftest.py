"""Shared fixtures. Paths (`root`, `shared`, `tiny_preset`), the tiny preset as a config (`tiny_config`), data helpers
(`make_records`, `write_jsonl`), the builtin tokenizer (`tok`), a session-wide cache of trained tiny runs
(`tiny_run`), a run folder's model for inference (`load_run`) and uvicorn in a thread (`server_thread`)."""

import atexit
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the base scores that `medtune eval` keeps (medtune.evalcache) go to a folder of this session (session-wide fixtures)
# or of each test (fresh_eval_cache), never the user's cache
os.environ["MEDTUNE_CACHE"] = tempfile.mkdtemp(prefix="medtune-test-cache-")
atexit.register(shutil.rmtree, os.environ["MEDTUNE_CACHE"], ignore_errors=True)


@pytest.fixture(autouse=True)
def fresh_eval_cache(tmp_path, monkeypatch):
    """Each test's evals keep base scores in its own folder: none kept by another test changes what it measures."""
    monkeypatch.setenv("MEDTUNE_CACHE", str(tmp_path / "medtune-cache"))


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return _ROOT


@pytest.fixture(scope="session")
def shared(root) -> Path:
    """../shared/data: real data and tokenizers, where present."""
    return root.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_preset(root) -> Path:
    """configs/tiny-cpu.yaml"""
    return root / "configs" / "tiny-cpu.yaml"


@pytest.fixture(scope="session")
def tiny_config(tiny_preset):
    """A function: (out, *overrides, **top) -> the tiny-cpu preset with quick-test overrides; `overrides` are
    section.key=value strings, `top` keyword values such as model__name=..."""
    from medtune.validate import load_config

    def make(out, *overrides, **top):
        quick = [
            "train.max_steps=6",
            "train.eval_steps=3",
            "train.save_steps=3",
            "train.logging_steps=2",
            "train.report_to=none",
        ]
        return load_config(tiny_preset, quick + list(overrides), output_dir=str(out), **top)

    return make


@pytest.fixture(scope="session")
def tok():
    from medtune.model import load_tokenizer

    return load_tokenizer("builtin:tiny")


@pytest.fixture(scope="session")
def write_jsonl():
    """A function: (path, rows) -> path, the rows written one JSON object a line."""

    def write(path, rows):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    return write


@pytest.fixture(scope="session")
def make_records():
    """A function: (n, prefix="q") -> n distinct instruction/input/output records."""

    def make(n, prefix="q"):
        return [
            {
                "instruction": "Answer this question truthfully",
                "input": f"What about {prefix} number {i}?",
                "output": f"Item {i} is a common condition that usually improves with rest and fluids.",
            }
            for i in range(n)
        ]

    return make


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config):
    """A function: (name="tiny-run", *overrides) -> the folder of the tiny preset trained for a few steps. Each name
    is trained once per test session (shared by the merge, generate and serving tests)."""
    runs: dict[str, Path] = {}

    def train(name="tiny-run", *overrides):
        if name not in runs:
            from medtune import training

            out = tmp_path_factory.getbasetemp() / name
            shutil.rmtree(out, ignore_errors=True)
            training.run(
                tiny_config(out, "train.max_steps=4", "train.eval_steps=100", "train.save_steps=100", *overrides)
            )
            runs[name] = out
        return runs[name]

    return train


@pytest.fixture(scope="session")
def load_run():
    """A function: (folder, device=None) -> (model, tokenizer, config) of a run or merged folder, loaded the way
    `medtune generate` loads it (medtune.rundir.open_run + medtune.model.load_model)."""
    from medtune.model import load_model
    from medtune.rundir import open_run

    def load(path, device=None):
        run = open_run(path)
        model, tok = load_model(run, device=device)
        return model, tok, run.config

    return load


class ServerThread:
    """uvicorn on a free loopback port, in a thread: `with ServerThread(app) as srv: ... srv.url ...`"""

    def __init__(self, app):
        import uvicorn

        from medtune.serving.server import listen

        self.sock = listen("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="session")
def server_thread():
    """A factory: `with server_thread(app) as srv:` serves the ASGI app on 127.0.0.1 at srv.url until the block ends."""
    return ServerThread
