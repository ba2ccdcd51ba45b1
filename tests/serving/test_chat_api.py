"""POST /v1/chat/completions through the real `openai` client against uvicorn on loopback: replies and their usage,
streamed chunks in the chat delta format, the system prompt, stop strings, OpenAI error objects, the API key."""

import json

import httpx
import openai
import pytest

from medtune.notice import NOTICE

QUESTION = "What are the symptoms of asthma?"


@pytest.fixture(scope="module")
def engine(tiny_run):
    from medtune.serving.engine import EngineClient, Limits

    e = EngineClient(tiny_run(), Limits(max_tokens=64, queue_size=8))
    yield e
    e.close()


@pytest.fixture(scope="module")
def server(engine, server_thread):
    from medtune.serving.app import create_app
    from medtune.serving.server import LOOPBACK

    with server_thread(create_app(engine=engine, allowed_hosts=LOOPBACK)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def ask(client, content=QUESTION, system=None, **kw):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return client.chat.completions.create(model="medtune", messages=messages, **kw)


def prompt_tokens(engine, question, instruction=None):
    """Tokens of the run's instruction template around a question (the tiny run is a template run)."""
    from medtune.generate import prompt_for

    return len(engine.tok(prompt_for(question, engine.cfg.data, instruction), add_special_tokens=False)["input_ids"])


def test_reply_shape_usage_and_notice(client, engine):
    r = ask(client, max_tokens=12, seed=1)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == engine.name
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens == prompt_tokens(engine, QUESTION)  # one user turn: the question in the run's template
    assert 0 <= u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert (choice.finish_reason == "length") == (u.completion_tokens == 12)
    assert r.model_extra["notice"] == NOTICE
    # seeded sampling repeats; max_completion_tokens is max_tokens' newer name
    again = ask(client, max_completion_tokens=12, seed=1)
    assert again.choices[0].message.content == choice.message.content and again.usage == u


def test_system_prompt_is_the_instruction_of_a_template_run(client, engine):
    system = "Answer in one short sentence for a nurse."
    r = ask(client, system=system, max_tokens=2)
    assert r.usage.prompt_tokens == prompt_tokens(engine, QUESTION, instruction=system)
    assert r.usage.prompt_tokens != prompt_tokens(engine, QUESTION)
    developer = client.chat.completions.create(
        model="m",
        max_tokens=2,
        messages=[  # OpenAI's newer name for system
            {"role": "developer", "content": system},
            {"role": "user", "content": QUESTION},
        ],
    )
    assert developer.usage.prompt_tokens == r.usage.prompt_tokens


def test_streamed_chunks_match_the_whole_reply(client):
    kw = dict(max_tokens=24, seed=7, temperature=1.0)
    whole = ask(client, **kw)
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}, **kw))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    first, *middle, end, usage = chunks
    assert first.choices[0].delta.role == "assistant" and not first.choices[0].delta.content
    assert all(c.choices[0].finish_reason is None and c.usage is None for c in [first] + middle)
    assert end.choices[0].finish_reason == whole.choices[0].finish_reason and end.usage is None
    assert usage.choices == [] and usage.usage == whole.usage
    assert "".join(c.choices[0].delta.content or "" for c in middle) == whole.choices[0].message.content
    assert first.model_extra["notice"] == usage.model_extra["notice"] == NOTICE
    # without include_usage: no usage chunk; the finish chunk is the last and carries the notice
    plain = list(ask(client, stream=True, **kw))
    assert plain[-1].choices[0].finish_reason == end.choices[0].finish_reason
    assert all(c.usage is None for c in plain) and plain[-1].model_extra["notice"] == NOTICE


def test_stream_is_sse_ending_with_done(server):
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in "".join(r.iter_text()).split("\n\n") if e and not e.startswith(":")]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def first_unique_piece(text: str, start: int, size: int = 4) -> tuple[str, int]:
    """A piece of `text` at or after `start` that does not occur earlier, and where it begins."""
    for i in range(start, len(text) - size):
        piece = text[i : i + size]
        if piece.strip() and text.find(piece) == i:
            return piece, i
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_strings_cut_the_answer_before_them(client, server):
    """A seeded answer, then the same request with a piece of that answer as a stop string: the answer up to it."""
    kw = dict(max_tokens=40, temperature=1.0)
    seed, full = next(
        (s, r) for s in range(20) if len((r := ask(client, seed=s, **kw)).choices[0].message.content) > 20
    )
    text = full.choices[0].message.content
    stop, at = first_unique_piece(text, 8)
    want = text[:at].rstrip()
    for stops in ([stop, "never in this answer"], stop):
        r = ask(client, seed=seed, stop=stops, **kw)
        assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens <= full.usage.completion_tokens
    streamed = list(ask(client, seed=seed, stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want
    assert streamed[-1].choices[0].finish_reason == "stop"
    # /v1/completions takes the same stop strings (one request path)
    body = {"prompt": QUESTION, "seed": seed, "stop": [stop], **kw}
    done = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
    assert done["choices"][0]["text"] == want and done["choices"][0]["finish_reason"] == "stop"


BAD = [  # (request keywords, status, phrase of the message, param)
    (
        dict(messages=[{"role": "doctor", "content": "Hi"}]),
        400,
        "roles are system, user and assistant",
        "messages[0].role",
    ),
    (dict(messages=[]), 400, "'messages' must not be empty", "messages"),
    (dict(messages=[{"role": "user", "content": "Hi"}], n=2), 400, "only n=1", "n"),
    (dict(messages=[{"role": "user", "content": "word " * 700}]), 400, "at most 511", "messages"),
    (dict(messages=[{"role": "user", "content": "Hi"}], max_tokens=65), 400, "at most 64", "max_tokens"),
    (
        dict(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        400,
        "the last message must be a user message",
        "messages[1].role",
    ),
    (dict(messages=[{"role": "user", "content": "Hi"}], stop=["a", "b", "c", "d", "e"]), 400, "at most 4", "stop"),
    (dict(messages=[{"role": "user"}]), 400, "'messages[0].content' is required", "messages[0].content"),
    (
        dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        400,
        "only text parts",
        "messages[0].content",
    ),
]


@pytest.mark.parametrize("kw, status, phrase, param", BAD, ids=[b[2][:30] for b in BAD])
def test_errors_are_openai_error_objects(client, kw, status, phrase, param):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="medtune", **kw)
    e = info.value
    assert e.status_code == status and phrase in e.message and e.param == param
    assert e.type == "invalid_request_error" and set(e.body) == {"message", "type", "param", "code"}


def test_text_parts_and_an_earlier_conversation_are_accepted(client, engine):
    parts = [{"type": "text", "text": "What are the symptoms"}, {"type": "text", "text": "of asthma?"}]
    r = client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}], max_tokens=1)
    assert r.usage.prompt_tokens == prompt_tokens(engine, "What are the symptoms\nof asthma?")
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": QUESTION},
    ]
    r = client.chat.completions.create(model="m", messages=history, max_tokens=1)
    assert r.usage.prompt_tokens == prompt_tokens(engine, f"User: Hi\nAssistant: Hello.\nUser: {QUESTION}")


def test_api_key_and_metrics(engine, server_thread):
    from medtune.serving.app import create_app

    with server_thread(create_app(engine=engine, api_key="chat-key")) as srv:
        with openai.OpenAI(base_url=srv.url + "/v1", api_key="chat-key", max_retries=0) as ok:
            assert (
                ok.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
                .choices[0]
                .message.role
                == "assistant"
            )
        with openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                bad.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}])
        assert info.value.status_code == 401 and info.value.type == "authentication_error"
        metrics = httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer chat-key"}).text
    assert 'medtune_requests_total{path="/v1/chat/completions",status="200"} 1.0' in metrics
    assert "medtune_request_seconds_count 1.0" in metrics  # the latency of the one answered chat
