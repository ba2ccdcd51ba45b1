"""Property-based tests (hypothesis): whatever the input, medtune either succeeds or raises MedtuneError (the CLI's
one-line error); the server answers any request body, on /v1/completions and /v1/chat/completions, with a 200 or a 4xx,
never another exception or a 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from medtune.config import DataConfig
from medtune.data import load_records, split_records, validate_records
from medtune.errors import MedtuneError
from medtune.validate import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-cpu.yaml"

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
records = st.lists(
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "other"]), values, max_size=4), max_size=12
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.one_of(records, values))
def test_any_data_file_loads_or_is_refused(tmp_path, rows):
    f = tmp_path / "data.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) if isinstance(rows, list) else json.dumps(rows) + "\n")
    try:
        recs, _ = validate_records(load_records(DataConfig(source=str(f))), str(f))
        split_records(recs, 0.1, 0.1, 0)
    except MedtuneError as e:  # one problem: one line; several: "N problems:" and one indented line each
        lines = str(e).splitlines()
        assert len(lines) == 1 or (
            lines[0] == f"{len(lines) - 1} problems:" and all(ln[:2] == "  " for ln in lines[1:])
        )


keys = st.sampled_from(
    [
        "train.learning_rate",
        "train.epochs",
        "train.max_steps",
        "train.optim",
        "train.disable",
        "data.max_length",
        "data.max_records",
        "data.val_fraction",
        "data.prompt_template",
        "model.lora_r",
        "model.lora_targets",
        "model.quantization",
        "generate.top_p",
        "generate.temperature",
        "eval.split",
        "train.bf16",
        "output_dir",
        "nope.key",
        "train",
    ]
)
raw_values = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(["true", "null", "[1, 2]", "{a: 1}", "-1", "0", "1e9", ".inf", "'{x}'"]),
)


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(keys, raw_values), max_size=4))
def test_any_override_loads_or_is_refused(pairs):
    try:
        load_config(TINY, [f"{k}={v}" for k, v in pairs])
    except MedtuneError as e:  # one problem: one line; several: "N problems:" and one indented line each
        lines = str(e).splitlines()
        assert len(lines) == 1 or (
            lines[0] == f"{len(lines) - 1} problems:" and all(ln[:2] == "  " for ln in lines[1:])
        )


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from medtune import training
    from medtune.serving.app import create_app
    from medtune.serving.engine import Limits

    out = tmp_path_factory.mktemp("prop") / "run"
    training.run(
        load_config(
            TINY,
            [
                "train.max_steps=1",
                "train.save_steps=100",
                "train.eval_steps=100",
                "train.report_to=none",
                "data.max_records=30",
            ],
            output_dir=str(out),
        )
    )
    with TestClient(create_app(out, limits=Limits(max_tokens=3))) as c:
        yield c


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
fields = st.sampled_from(
    [
        "prompt",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "seed",
        "stop",
        "raw",
        "model",
        "n",
        "user",
        "extra",
    ]
)
stops = st.one_of(st.none(), st.text(max_size=6), st.lists(st.text(max_size=6), max_size=5), json_values)
good_stops = st.one_of(st.text(min_size=1, max_size=6), st.lists(st.text(min_size=1, max_size=6), max_size=4))
roles = st.sampled_from(["system", "user", "assistant", "developer", "tool", ""])
message = st.one_of(
    st.fixed_dictionaries(
        {"role": roles, "content": st.one_of(st.text(max_size=40), json_values)},
        optional={"name": json_values, "extra": json_values},
    ),
    json_values,
)
turn = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40)}
)
conversation = st.tuples(st.lists(turn, max_size=3), st.text(max_size=40)).map(  # ends with a user turn
    lambda t: t[0] + [{"role": "user", "content": t[1]}]
)
routes = st.sampled_from(["/v1/completions", "/v1/chat/completions"])
completion_body = st.fixed_dictionaries(
    {"prompt": st.text(max_size=60)},
    optional={
        "max_tokens": st.integers(-2, 5),
        "raw": st.booleans(),
        "temperature": st.floats(-1, 3),
        "seed": st.integers(-1, 2**33),
        "stop": stops,
    },
)
chat_body = st.fixed_dictionaries(
    {"messages": st.one_of(conversation, st.lists(message, max_size=4))},
    optional={
        "max_tokens": st.integers(0, 3),
        "max_completion_tokens": st.integers(1, 3),
        "stream": st.booleans(),
        "stop": good_stops,
        "seed": st.integers(-1, 2**32),
        "temperature": st.floats(0, 10.5),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
requests = st.one_of(
    st.tuples(routes, st.one_of(st.dictionaries(fields, json_values, max_size=5), json_values)),
    st.tuples(st.just("/v1/completions"), completion_body),
    st.tuples(st.just("/v1/chat/completions"), chat_body),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_any_request_body_is_200_or_4xx(client, request):
    route, body = request
    r = client.post(route, content=json.dumps(body), headers={"Content-Type": "application/json"})
    event(f"{route} {r.status_code}")  # --hypothesis-show-statistics: how many bodies each route answered with 200
    assert r.status_code == 200 or 400 <= r.status_code < 500, (route, body, r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=80), route=routes)
def test_any_bytes_are_200_or_4xx(client, raw, route):
    r = client.post(route, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 or 400 <= r.status_code < 500, (raw, r.status_code)


def test_lone_surrogate_prompt_is_400(client):
    r = client.post("/v1/completions", content='{"prompt": "\\ud800"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post(
        "/v1/chat/completions",
        content='{"messages": [{"role": "user", "content": "\\ud800"}]}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
