"""The generation worker in a process of its own (Limits.worker="process", the default on CUDA): same answers as in
a thread, cancellation, a worker that dies fails its jobs (and the server says so), a load failure is one clear
error."""

import asyncio
import dataclasses
import os
import signal
import time

import pytest

from tests.serving.test_engine import _job, _results


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run()


def _answers(engine, prompts):
    jobs = [_job(engine, p, seed=i, temperature=0.9, max_tokens=8) for i, p in enumerate(prompts)]
    for j in jobs:
        assert engine.submit(j)
    return [value for _, value, _ in _results(jobs)]


def test_a_worker_process_answers_as_a_thread_does_and_dies_cleanly(run_dir):
    from fastapi.testclient import TestClient

    from medtune.serving.app import create_app
    from medtune.serving.engine import EngineClient, Limits

    prompts = ["What is asthma?", "What is gout?", "How is flu spread?"]
    threaded = EngineClient(run_dir, Limits(max_batch_size=4, worker="thread"))
    try:
        expected = _answers(threaded, prompts)
    finally:
        threaded.close()
    engine = EngineClient(run_dir, Limits(max_batch_size=4, worker="process"))
    try:
        assert engine.worker is None and engine._runner.is_alive()
        assert _answers(engine, prompts) == expected
        assert engine.pending == 0 and engine.generated_tokens == sum(a["completion_tokens"] for a in expected)

        # a long job, cancelled by its handler after its first text: the worker stops it
        engine.cfg.generate = dataclasses.replace(engine.cfg.generate, loop_guard=0)
        whole = _job(engine, "What is asthma?", max_tokens=300, seed=3)
        assert engine.submit(whole)
        n = _results([whole])[0][1]["completion_tokens"]
        job = _job(engine, "What is asthma?", max_tokens=300, seed=3, stream=True)
        assert engine.submit(job)
        kind, _ = job.loop.run_until_complete(asyncio.wait_for(job.events.get(), 60))
        job.cancel.set()
        while kind == "text":
            kind, value = job.loop.run_until_complete(asyncio.wait_for(job.events.get(), 60))
        assert n > 100 and kind == "done" and value["completion_tokens"] < n

        # the worker process dies: jobs in flight fail, later ones are refused, /health says so
        slow = _job(engine, "What is gout?", max_tokens=400)
        assert engine.submit(slow)
        os.kill(engine._runner.pid, signal.SIGKILL)
        kind, value = slow.loop.run_until_complete(asyncio.wait_for(slow.events.get(), 60))
        assert kind in ("error", "done")  # it may have ended before the kill
        deadline = time.time() + 30
        while not engine.failed:
            assert time.time() < deadline
            time.sleep(0.05)
        assert not engine.submit(_job(engine, "What is flu?")) and engine.pending == 0
        with TestClient(create_app(engine=engine), raise_server_exceptions=False) as c:
            assert c.get("/health").status_code == 503
            r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2})
            assert r.status_code == 503 and "worker stopped" in r.json()["error"]["message"]
    finally:
        engine.close()


def test_a_worker_that_cannot_load_is_one_clear_error(run_dir, tmp_path):
    import shutil

    from medtune.errors import MedtuneError
    from medtune.serving.engine import EngineClient, Limits

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not weights")
    with pytest.raises(MedtuneError, match="cannot load the model"):
        EngineClient(broken, Limits(worker="process"))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(line.startswith("State:") and "Z" in line.split()[1] for line in f)  # a zombie has exited
    except FileNotFoundError:
        return True


def test_a_worker_process_exits_when_the_server_is_killed(run_dir):
    """SIGKILL to the server: the worker sees its pipe close and exits by itself (no orphan holding the GPU)."""
    import subprocess
    import sys

    code = (
        "import sys, time; from medtune.serving.engine import EngineClient, Limits; "
        "e = EngineClient(sys.argv[1], Limits(worker='process')); print(e._runner.pid, flush=True); time.sleep(600)"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(server.stdout.readline())
        assert not _gone(worker)
        server.kill()
        server.wait(30)
        deadline = time.time() + 60
        while not _gone(worker):
            assert time.time() < deadline, "the worker outlived the server"
            time.sleep(0.1)
    finally:
        server.kill()
