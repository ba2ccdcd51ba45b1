"""medtune serve (medtune.serving.app): the OpenAI-style API, streaming, limits, the queue, and a 4xx JSON answer to
every bad request."""

import json
import threading
import time

import httpx
import pytest

NOTICE_START = "Not medical advice"


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run()


@pytest.fixture(scope="module")
def engine(run_dir):
    from medtune.serving.engine import EngineClient, Limits

    e = EngineClient(run_dir, Limits(max_tokens=64, max_body_bytes=4096, queue_size=8))
    yield e
    e.close()


@pytest.fixture(scope="module")
def client(engine):
    from fastapi.testclient import TestClient

    from medtune.serving.app import create_app

    with TestClient(create_app(engine=engine), raise_server_exceptions=False) as c:
        yield c


def sse_data(text: str) -> list[str]:
    """The data of each server-sent event; every event is one `data: ` line. Comment-only events (`: ping`, which
    sse-starlette sends on long streams) carry no data and are skipped."""
    assert text.endswith("\n\n")
    events = [e for e in text.split("\n\n") if e]
    events = [e for e in events if not all(line.startswith(":") for line in e.split("\n"))]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


def complete(client, **body):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- basics


def test_health_models_page(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["limits"]["max_tokens"] == 64 and h["notice"].startswith(NOTICE_START)
    assert client.get("/v1/models").json()["data"][0]["id"] == h["model"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Content-Security-Policy" in page.headers
    for needle in ('id="question"', 'id="ask"', 'id="answers"', NOTICE_START, "/static/app.js"):
        assert needle in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "text/javascript" in js.headers["content-type"] and "textContent" in js.text
    assert client.get("/static/style.css").status_code == 200
    missing = client.get("/static/../serve.py")
    assert missing.status_code == 404 and "error" in missing.json()


def test_completion_shape_and_limits(client, engine):
    body = complete(client, prompt="What is asthma?", max_tokens=12, seed=1)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == engine.name
    (choice,) = body["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length") and choice["index"] == 0
    u = body["usage"]
    assert 0 <= u["completion_tokens"] <= 12 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert (choice["finish_reason"] == "length") == (u["completion_tokens"] == 12)
    assert body["notice"].startswith(NOTICE_START)
    # the question was wrapped in the run's prompt template; raw sends it as-is
    raw = complete(client, prompt="What is asthma?", max_tokens=1, raw=True)
    assert raw["usage"]["prompt_tokens"] < u["prompt_tokens"] and u["prompt_tokens"] == len(
        engine.prompt_ids("What is asthma?", False)
    )
    # a seed makes sampling repeatable; temperature 0 is greedy
    assert complete(client, prompt="What is asthma?", max_tokens=12, seed=1)["choices"][0]["text"] == choice["text"]
    g1 = complete(client, prompt=["What is flu?"], max_tokens=8, temperature=0)
    assert complete(client, prompt="What is flu?", max_tokens=8, temperature=0, top_p=0.5)["choices"] == g1["choices"]
    # no max_tokens: the run's generate.max_new_tokens, capped by the server limit
    assert complete(client, prompt="Hi", model="anything", n=1, user="u")["usage"]["completion_tokens"] <= 60


def test_a_greedy_run_answers_greedily_unless_asked_to_sample(client, engine, monkeypatch):
    """generate.greedy in the run's config: a request naming no temperature is decoded greedily (its seed does not
    matter); one naming a temperature samples."""
    greedy = complete(client, prompt="What is gout?", max_tokens=10, temperature=0)["choices"][0]["text"]
    sampled = [complete(client, prompt="What is gout?", max_tokens=10, seed=s)["choices"][0]["text"] for s in (1, 2)]
    monkeypatch.setattr(engine.cfg.generate, "greedy", True)
    for seed in (1, 2):
        assert complete(client, prompt="What is gout?", max_tokens=10, seed=seed)["choices"][0]["text"] == greedy
    assert [
        complete(client, prompt="What is gout?", max_tokens=10, seed=s, temperature=engine.cfg.generate.temperature)[
            "choices"
        ][0]["text"]
        for s in (1, 2)
    ] == sampled
    assert 'value="0.0"' in client.get("/").text  # the page's temperature field


def test_streaming_matches_non_streaming(client):
    req = dict(prompt="What are the symptoms of diabetes?", max_tokens=24, seed=7, temperature=1.0)
    full = complete(client, **req)
    with client.stream("POST", "/v1/completions", json={**req, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    data = sse_data(text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert final["usage"] == full["usage"] and final["notice"].startswith(NOTICE_START)
    assert chunks[0]["notice"].startswith(NOTICE_START)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]


# ---------------------------------------------------------------- every bad request: 4xx JSON

BAD_BODIES = {
    "not json": (b"what is asthma?", 400, "not valid JSON"),
    "truncated json": (b'{"prompt": "x"', 400, "not valid JSON"),
    "NaN": (b'{"prompt": "x", "temperature": NaN}', 400, "not valid JSON"),
    "not utf-8": (b'{"prompt": "\xff\xfe"}', 400, "not valid JSON"),
    "empty body": (b"", 400, "empty"),
    "null": (b"null", 400, "JSON object"),
    "array": (b'[{"prompt": "x"}]', 400, "JSON object"),
    "string": (b'"x"', 400, "JSON object"),
    "no prompt": (b"{}", 400, "'prompt' is required"),
    "prompt null": (b'{"prompt": null}', 400, "'prompt' must be a string"),
    "prompt number": (b'{"prompt": 5}', 400, "'prompt' must be a string"),
    "prompt object": (b'{"prompt": {"text": "x"}}', 400, "'prompt' must be a string"),
    "prompt empty": (b'{"prompt": ""}', 400, "must not be empty"),
    "prompt blank": (b'{"prompt": "   \\n"}', 400, "must not be empty"),
    "two prompts": (b'{"prompt": ["a", "b"]}', 400, "exactly one prompt"),
    "no prompts": (b'{"prompt": []}', 400, "exactly one prompt"),
    "prompt list of ints": (b'{"prompt": [1, 2]}', 400, "'prompt' must be a string"),
    "max_tokens 0": (b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    "max_tokens negative": (b'{"prompt": "x", "max_tokens": -5}', 400, "max_tokens"),
    "max_tokens over limit": (b'{"prompt": "x", "max_tokens": 65}', 400, "at most 64"),
    "max_tokens huge": (b'{"prompt": "x", "max_tokens": 100000000000000000000000}', 400, "at most 64"),
    "max_tokens float": (b'{"prompt": "x", "max_tokens": 5.5}', 400, "'max_tokens' must be an integer"),
    "max_tokens string": (b'{"prompt": "x", "max_tokens": "5"}', 400, "'max_tokens' must be an integer"),
    "max_tokens bool": (b'{"prompt": "x", "max_tokens": true}', 400, "'max_tokens' must be an integer"),
    "temperature negative": (b'{"prompt": "x", "temperature": -0.1}', 400, "temperature"),
    "temperature high": (b'{"prompt": "x", "temperature": 10.5}', 400, "temperature"),
    "temperature string": (b'{"prompt": "x", "temperature": "hot"}', 400, "'temperature' must be a number"),
    "temperature infinite": (b'{"prompt": "x", "temperature": 1e999}', 400, "temperature"),
    "top_p zero": (b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
    "top_p high": (b'{"prompt": "x", "top_p": 1.5}', 400, "top_p"),
    "stream string": (b'{"prompt": "x", "stream": "yes"}', 400, "'stream' must be true or false"),
    "stream int": (b'{"prompt": "x", "stream": 1}', 400, "'stream' must be true or false"),
    "raw string": (b'{"prompt": "x", "raw": "true"}', 400, "'raw' must be true or false"),
    "seed negative": (b'{"prompt": "x", "seed": -1}', 400, "seed"),
    "seed huge": (b'{"prompt": "x", "seed": 99999999999}', 400, "seed"),
    "n 2": (b'{"prompt": "x", "n": 2}', 400, "only n=1"),
    "unknown field": (b'{"prompt": "x", "max_token": 5}', 400, "unknown field 'max_token'"),
    "deep nesting": (b'{"prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}", 413, "larger than"),
    "too long prompt": (json.dumps({"prompt": "word " * 700}).encode(), 400, "at most"),
    "too large body": (json.dumps({"prompt": "x" * 5000}).encode(), 413, "larger than 4096 bytes"),
    "context overflow": (json.dumps({"prompt": "word " * 210, "max_tokens": 64}).encode(), 400, "context"),
}


def chat_body(*messages, **fields) -> bytes:
    return json.dumps({"messages": list(messages) or [{"role": "user", "content": "x"}], **fields}).encode()


USER = {"role": "user", "content": "What is asthma?"}
CHAT_BAD_BODIES = {  # the body's JSON is read as for /v1/completions (the cases above); here what is the chat's own
    **{k: BAD_BODIES[k] for k in ("not json", "NaN", "not utf-8", "empty body", "array", "deep nesting")},
    "no messages": (b"{}", 400, "'messages' is required"),
    "messages string": (b'{"messages": "hi"}', 400, "'messages' must be a list of messages"),
    "message string": (chat_body("hi"), 400, "'messages' must be a list of messages"),
    "empty messages": (chat_body(messages=[]), 400, "'messages' must not be empty"),
    "role missing": (chat_body({"content": "x"}), 400, "'messages[0].role' is required"),
    "role number": (chat_body({"role": 1, "content": "x"}), 400, "'messages[0].role' is 1"),
    "role tool": (chat_body({"role": "tool", "content": "x"}, USER), 400, "'messages[0].role' is \"tool\""),
    "content null": (chat_body({"role": "user", "content": None}), 400, "'messages[0].content' must be a string"),
    "content number": (chat_body({"role": "user", "content": 5}), 400, "'messages[0].content' must be a string"),
    "content blank": (chat_body({"role": "user", "content": " \n"}), 400, "must not be empty"),
    "image part": (
        chat_body({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
        400,
        "only text parts",
    ),
    "unknown message field": (
        chat_body({**USER, "tool_calls": []}),
        400,
        "unknown field 'tool_calls' in 'messages[0]'",
    ),
    "name number": (chat_body({**USER, "name": 3}), 400, "'messages[0].name' must be a string"),
    "ends with assistant": (chat_body(USER, {"role": "assistant", "content": "x"}), 400, "must be a user message"),
    "prompt field": (chat_body(prompt="x"), 400, "unknown field 'prompt'"),
    "tools": (chat_body(tools=[]), 400, "unknown field 'tools'"),
    "n 2": (chat_body(n=2), 400, "only n=1"),
    "max_tokens differ": (chat_body(max_tokens=5, max_completion_tokens=6), 400, "differ; send one of them"),
    "max_completion_tokens 0": (chat_body(max_completion_tokens=0), 400, "max_completion_tokens"),
    "max_completion_tokens over": (chat_body(max_completion_tokens=65), 400, "'max_completion_tokens' is 65"),
    "stop number": (chat_body(stop=5), 400, "'stop' must be a string or a list of strings"),
    "stop empty": (chat_body(stop=""), 400, "1 to 256 characters"),
    "stop long": (chat_body(stop="x" * 257), 400, "1 to 256 characters"),
    "stop five": (chat_body(stop=list("abcde")), 400, "at most 4"),
    "stop list of ints": (chat_body(stop=[1]), 400, "'stop' must be a string or a list of strings"),
    "stream_options string": (chat_body(stream_options="yes"), 400, "'stream_options' must be an object"),
    "include_usage string": (
        chat_body(stream_options={"include_usage": "yes"}),
        400,
        "'stream_options.include_usage' must be true or false",
    ),
    "stream_options unknown": (chat_body(stream_options={"usage": True}), 400, "unknown field 'usage' in"),
    "temperature high": (chat_body(temperature=10.5), 400, "temperature"),
    "too long": (
        chat_body({"role": "system", "content": "word " * 350}, {"role": "user", "content": "word " * 350}),
        400,
        "at most",
    ),
    "context overflow": (chat_body({"role": "user", "content": "word " * 210}, max_tokens=64), 400, "context"),
    "too large body": (chat_body({"role": "user", "content": "x" * 5000}), 413, "larger than 4096 bytes"),
}


@pytest.mark.parametrize(
    ("path", "case"),
    [("/v1/completions", c) for c in BAD_BODIES] + [("/v1/chat/completions", c) for c in CHAT_BAD_BODIES],
)
def test_bad_request_bodies_get_4xx_json(client, path, case):
    body, status, needle = (BAD_BODIES if path == "/v1/completions" else CHAT_BAD_BODIES)[case]
    r = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert needle in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_deeply_nested_json_within_size_limit(client):
    body = b'{"prompt": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    r = client.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and "error" in r.json()


@pytest.mark.parametrize(
    "method, path, headers, status",
    [
        ("POST", "/v1/completions", {"Content-Type": "text/plain"}, 415),
        ("POST", "/v1/completions", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ("POST", "/v1/completions", {}, 415),
        ("POST", "/v1/chat/completions", {"Content-Type": "text/plain"}, 415),
        ("GET", "/v1/completions", {}, 405),
        ("PUT", "/health", {}, 405),
        ("GET", "/v1/chat/completions", {}, 405),
        ("POST", "/v1/chat/completion", {}, 404),
    ],
)
def test_wrong_method_type_or_path_get_4xx_json(client, method, path, headers, status):
    r = client.request(method, path, content=b'{"prompt": "x"}', headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_host_check_blocks_other_hosts(engine):
    from fastapi.testclient import TestClient

    from medtune.serving.app import create_app
    from medtune.serving.server import LOOPBACK

    app = create_app(engine=engine, allowed_hosts=LOOPBACK)
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/health").status_code == 200
    assert TestClient(app, base_url="http://localhost").get("/health").status_code == 200
    r = TestClient(app, base_url="http://attacker.example:8000").get("/health")
    assert r.status_code == 400 and "not served" in r.json()["error"]["message"]


def test_serve_defaults_to_loopback_and_reports_busy_port():
    import inspect

    from medtune.cli import build_parser
    from medtune.errors import MedtuneError
    from medtune.serving.server import listen, serve

    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert build_parser().parse_args(["serve", "x"]).host == "127.0.0.1"
    sock = listen("127.0.0.1", 0)
    try:
        with pytest.raises(MedtuneError, match="cannot listen"):
            listen("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()


# ---------------------------------------------------------------- the queue


class GatedEngine:
    """Stands in for the decoding engine: every request streams "first ", then waits for the gate (or its
    cancellation); counts what it started and what was cancelled."""

    def __init__(self, state):
        self.state, self.requests, self.rows, self.steps_run = state, [], [], 0

    @property
    def pending(self):
        return len(self.requests)

    def add(self, request):
        self.state["started"] += 1
        self.requests.append(request)
        if request.on_text:
            request.on_text("first ")

    def step(self):
        from medtune.decoding import Completion

        time.sleep(0.01)
        for r in list(self.requests):
            if r.cancel.is_set():
                self.state["cancelled"] += 1
                text, reason = "", "cancelled"
            elif self.state["gate"].is_set():
                if r.on_text:
                    r.on_text("answer")
                text, reason = "first answer", "eos"
            else:
                continue
            self.requests.remove(r)
            r.on_done(Completion(text, [1, 2] if text else [], reason, len(r.ids)))

    def abort(self):
        dropped, self.requests = self.requests, []
        return dropped


@pytest.fixture
def gated(engine, monkeypatch):
    """Replace the decoding engine with GatedEngine (while no request is in flight)."""
    state = {"gate": threading.Event(), "cancelled": 0, "started": 0}
    wait_until(lambda: engine.pending == 0)
    monkeypatch.setattr(engine.worker, "engine", GatedEngine(state))
    yield state
    state["gate"].set()
    wait_until(lambda: engine.pending == 0)


def wait_until(cond, timeout=10):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_full_queue_is_429(client, engine, gated, monkeypatch):
    monkeypatch.setattr(engine.limits, "queue_size", 3)
    results = []

    def call(i):
        results.append(client.post("/v1/completions", json={"prompt": f"q{i}", "max_tokens": 2}).status_code)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: engine.pending == 3)
    busy = client.post("/v1/completions", json={"prompt": "one too many"})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"]["type"] == "server_busy"
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "one too many"}]})
    assert chat.status_code == 429 and chat.json()["error"]["type"] == "server_busy"
    assert client.get("/health").json()["queued"] == 3
    gated["gate"].set()
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200] and gated["started"] == 3


def test_client_leaving_cancels_its_generation(engine, gated, server_thread):
    from medtune.serving.app import create_app

    with server_thread(create_app(engine=engine)) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        # streaming: read the first chunk, then hang up
        with http.stream("POST", "/v1/completions", json={"prompt": "q", "stream": True}) as r:
            assert next(r.iter_lines()).startswith("data: ")
        wait_until(lambda: gated["cancelled"] == 1)
        chat = {"messages": [{"role": "user", "content": "q"}], "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=chat) as r:
            lines = r.iter_lines()
            assert '"role": "assistant"' in next(lines) and next(lines) == ""  # the opening chunk
            assert '"content": "first"}' in next(lines)  # its trailing space waits for what follows
        wait_until(lambda: gated["cancelled"] == 2)
        # non-streaming: give up while the answer is being generated
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json={"prompt": "impatient"}, timeout=0.5)
        wait_until(lambda: gated["cancelled"] == 3)  # the server polls for disconnects every second
        assert engine.pending == 0


def test_real_generation_stops_when_cancelled(engine):
    """A request cancelled while it runs stops at the next token; one cancelled before it starts never runs."""
    import threading as th

    from medtune.config import GenerateConfig
    from medtune.decoding import Request
    from medtune.generate import make_engine

    decoding = make_engine(engine.worker.model, engine.tok, 2)
    decoding.eos = -1
    g = GenerateConfig(max_new_tokens=50, greedy=True, loop_guard=0)
    running = Request(engine.prompt_ids("a b c", raw=True), g, th.Event())
    running.on_text = lambda text: running.cancel.set()
    never = Request(engine.prompt_ids("d e f", raw=True), g, th.Event())
    never.cancel.set()
    a, b = decoding.run([running, never])
    assert a.stop_reason == "cancelled" and 1 <= len(a.token_ids) <= 3
    assert b.stop_reason == "cancelled" and b.token_ids == []


def test_generation_failure_is_reported_and_server_keeps_serving(client, engine, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.worker.engine, "step", broken)
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    with client.stream("POST", "/v1/completions", json={"prompt": "x", "stream": True}) as s:
        data = sse_data("".join(s.iter_text()))
    assert json.loads(data[0])["error"]["message"].startswith("generation failed") and data[-1] == "[DONE]"
    monkeypatch.undo()
    assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_serves_a_merged_folder_with_the_same_template(run_dir, engine, tmp_path):
    from fastapi.testclient import TestClient

    from medtune.merge import merge
    from medtune.serving.app import create_app

    merged = tmp_path / "merged"
    merge(run_dir, merged)
    with TestClient(create_app(merged)) as c:
        body = complete(c, prompt="What is asthma?", max_tokens=4, temperature=0)
    assert body["model"] == "merged"
    assert body["usage"]["prompt_tokens"] == len(engine.prompt_ids("What is asthma?", False))


def test_the_http_schema_holds_the_configs_bounds():
    """One bound for each setting: a request may ask for what `--set generate.KEY=` accepts, and no more."""
    from medtune.config import GenerateConfig, bounds
    from medtune.serving.schemas import GenerationRequest

    for name in ("temperature", "top_p", "seed"):
        meta = GenerationRequest.model_fields[name].metadata
        declared = {k: getattr(m, k) for m in meta for k in ("ge", "le", "gt", "lt") if hasattr(m, k)}
        assert declared == bounds(GenerateConfig, name), name
