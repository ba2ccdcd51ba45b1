"""Batched serving: requests that wait together are decoded together, each with its own settings; API key; metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from medtune import training
    from medtune.validate import load_config

    out = tmp_path_factory.mktemp("engine") / "run"
    training.run(
        load_config(
            ROOT / "configs" / "tiny-cpu.yaml",
            [
                "train.max_steps=3",
                "train.save_steps=100",
                "train.eval_steps=100",
                "train.report_to=none",
                "data.max_records=40",
            ],
            output_dir=str(out),
        )
    )
    return out


def _job(engine, prompt: str, **kw):
    from medtune.serving.engine import Job

    loop = asyncio.new_event_loop()
    defaults = dict(max_tokens=12, temperature=0.7, top_p=0.9, seed=5, stream=False)
    return Job(input_ids=engine.prompt_ids(prompt, False), loop=loop, **{**defaults, **kw})


def _results(jobs, timeout=60):
    """Each job's streamed text and final event, read from its own event loop."""
    out = []
    for j in jobs:
        pieces = []
        while True:
            kind, value = j.loop.run_until_complete(asyncio.wait_for(j.events.get(), timeout))
            if kind == "text":
                pieces.append(value)
                continue
            out.append((kind, value, "".join(pieces)))
            break
    return out


def test_answers_do_not_depend_on_what_runs_beside_them(run_dir):
    """A request's answer depends on its prompt and seed only, not on which requests share its steps."""
    from medtune.serving.engine import EngineClient, Limits

    engine = EngineClient(run_dir, Limits(max_batch_size=8))
    try:
        prompts = ["What is asthma?", "How is a broken arm treated at home and in hospital?", "What is gout?"]
        settings = [dict(seed=i, max_tokens=6 + 3 * i, temperature=[0.0, 0.7, 1.3][i]) for i in range(3)]
        jobs = [_job(engine, p, **kw) for p, kw in zip(prompts, settings)]
        for j in jobs:
            assert engine.submit(j)
        together = [value for _, value, _ in _results(jobs)]
        alone = []
        for p, kw in zip(prompts, settings):
            job = _job(engine, p, **kw)
            assert engine.submit(job)
            alone.append(_results([job])[0][1])
        assert together == alone
        for kw, r in zip(settings, together):
            assert r["completion_tokens"] <= kw["max_tokens"]
        assert engine.pending == 0 and engine.generated_tokens == 2 * sum(r["completion_tokens"] for r in together)
    finally:
        engine.close()


def test_a_request_joins_the_running_batch(run_dir):
    """Continuous batching: a short request sent while a long one runs is decoded beside it and ends first."""
    from medtune.serving.engine import EngineClient, Limits

    engine = EngineClient(run_dir, Limits(max_batch_size=4))
    try:
        decoding = engine.worker.engine
        widths = []
        real_step = decoding.step
        decoding.step = lambda: (widths.append(len(decoding.rows)), real_step())[1]
        finished = []
        long_job = _job(engine, "Question 0?", max_tokens=60, temperature=0.0)
        short_job = _job(engine, "Question 1?", max_tokens=3, temperature=0.0)
        make_request = engine.worker.request

        def request(key, *args):  # records the order in which the engine finishes requests
            r = make_request(key, *args)
            done = r.on_done
            r.on_done = lambda c: (finished.append(key), done(c))
            return r

        engine.worker.request = request
        decoding.eos = -1  # neither may stop early (the tiny model repeats itself: no loop guard either)
        engine.cfg.generate = dataclasses.replace(engine.cfg.generate, loop_guard=0)
        assert engine.submit(long_job)
        for _ in range(1000):
            if decoding.steps_run >= 3:
                break
            threading.Event().wait(0.005)
        assert engine.submit(short_job)
        results = _results([long_job, short_job])
        assert [r[1]["completion_tokens"] for r in results] == [60, 3]
        assert finished == [1, 0] and max(widths) == 2  # the short job (id 1) ended first
    finally:
        engine.close()


def test_streamed_text_equals_the_answer_and_cancel_stops(run_dir):
    from medtune.serving.engine import EngineClient, Limits

    engine = EngineClient(run_dir, Limits(max_batch_size=4))
    try:
        engine.worker.engine.eos = -1
        engine.cfg.generate = dataclasses.replace(engine.cfg.generate, loop_guard=0)
        streamed = _job(engine, "What is asthma?", stream=True, max_tokens=20)
        cancelled = _job(engine, "What is gout?", stream=True, max_tokens=500)
        put = cancelled.put
        cancelled.put = lambda kind, value: (cancelled.cancel.set(), put(kind, value))  # the client leaves
        for j in (streamed, cancelled):
            assert engine.submit(j)
        (kind2, stopped, _), (kind, done, text) = _results([cancelled, streamed])  # cancelled as its text arrives
        assert kind == kind2 == "done" and text == done["text"] and done["completion_tokens"] == 20
        assert stopped["completion_tokens"] < 10 and stopped["finish_reason"] == "length"
    finally:
        engine.close()


@pytest.fixture(scope="module")
def keyed(run_dir):
    from fastapi.testclient import TestClient

    from medtune.serving.app import create_app
    from medtune.serving.engine import Limits

    with TestClient(create_app(run_dir, limits=Limits(max_tokens=8), api_key="k3y")) as c:
        yield c


def test_api_key_required_everywhere_but_health(keyed):
    assert keyed.get("/health").status_code == 200
    for method, path in (
        ("get", "/"),
        ("get", "/v1/models"),
        ("get", "/metrics"),
        ("post", "/v1/completions"),
        ("get", "/static/app.js"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k3y"}):
            r = getattr(keyed, method)(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json() == {
                "error": {"message": "unauthorized", "type": "authentication_error", "param": None, "code": None}
            }
    ok = keyed.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers={"Authorization": "Bearer k3y"})
    assert ok.status_code == 200 and "choices" in ok.json()


def test_page_key_sets_cookie_then_page_and_api_work(keyed):
    r = keyed.get("/?key=wrong", follow_redirects=False)
    assert r.status_code == 401
    r = keyed.get("/?key=k3y", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/" and "HttpOnly" in r.headers["set-cookie"]
    assert keyed.get("/").status_code == 200  # the client keeps the cookie
    assert keyed.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    keyed.cookies.clear()


def test_metrics_count_requests_tokens_and_rejections(run_dir):
    from fastapi.testclient import TestClient

    from medtune.serving.app import create_app
    from medtune.serving.engine import Limits

    with TestClient(create_app(run_dir, limits=Limits(max_tokens=4))) as c:
        for _ in range(3):
            assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 3}).status_code == 200
        assert c.post("/v1/completions", json={"prompt": ""}).status_code == 400
        text = c.get("/metrics").text
    values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}
    assert values['medtune_requests_total{path="/v1/completions",status="200"}'] == 3
    assert values['medtune_requests_total{path="/v1/completions",status="400"}'] == 1
    assert values["medtune_request_seconds_count"] == 3
    assert 3 <= values["medtune_generated_tokens_total"] <= 9
    assert values["medtune_queue_depth"] == 0 and values["medtune_rejected_total"] == 0


def test_non_loopback_needs_a_key(run_dir):
    from medtune.errors import MedtuneError
    from medtune.serving.server import serve

    with pytest.raises(MedtuneError, match="--insecure"):
        serve(run_dir, host="0.0.0.0", port=0)
    with pytest.raises(MedtuneError, match="--max-batch-size must be >= 1"):
        serve(run_dir, port=0, max_batch_size=0)


@pytest.mark.parametrize(
    "pieces, stops, sent, answer",
    [
        (
            ["Rest ", "and flu", "ids.\n\n#", "## User: more"],
            ("###",),
            ["Rest", " and flu", "ids."],
            "Rest and fluids.",
        ),
        (["a #", "# b ##", "#c"], ("###",), ["a", " ## b"], "a ## b"),  # a prefix held, then let go
        (["one two", " three"], ("two", "e t"), ["on"], "on"),  # the earliest of several stops
        (["Yes.  ", "  \n", "More"], ("\n\n",), ["Yes.", "    \nMore"], None),  # whitespace waits for what follows
        (["Yes.\n", "\nMore"], ("\n\n",), ["Yes."], "Yes."),  # a whitespace stop string
        (["end  "], (), ["end"], None),  # no stops: only trailing whitespace is held (the answer is stripped)
    ],
)
def test_stop_text_cuts_before_the_first_stop_string(pieces, stops, sent, answer):
    from medtune.serving.worker import StopText

    watch = StopText(stops)
    out = [p for p in map(watch.feed, pieces) if p] + [p for p in [watch.finish()] if p]
    assert out == sent
    assert (watch.answer if watch.cut is not None else None) == answer
