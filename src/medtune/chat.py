"""Chat records: multi-turn conversations, trained with the loss on every assistant turn.

A chat record is `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}`, as in OpenAI's
fine-tuning files; ShareGPT's `{"from": "system" | "human" | "gpt", "value": str}` turns are read into that form.
A conversation is rendered as segments `(text, is_answer)`: the context (masked from the loss) and each assistant
turn's text, which the encoder follows with the EOS token (the end-of-turn token in chat format) and learns.

Rendering: data.prompt_format=chat uses the tokenizer's chat template; otherwise (GPT-2 and other tokenizers
without one) medtune's plain template, the alpaca style extended to turns:

    Below is a conversation between a user and an assistant. ...

    ### System:
    {system}

    ### User:
    {user}

    ### Assistant:
    {answer}<EOS>

    ### User:
    ...
"""

from __future__ import annotations

from medtune.errors import MedtuneError

COLUMNS = ("messages", "conversations")  # detected when the data has no instruction/input/output columns
ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
PREAMBLE = "Below is a conversation between a user and an assistant. Write the assistant's next response.\n\n"
HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}
_MARK = "MEDTUNEANSWER{}TEXT"  # stands in for an assistant turn while a chat template is rendered


def is_chat(r: dict) -> bool:
    return "messages" in r


def normalize(turns) -> tuple[list[dict], list[tuple[str, str]]]:
    """A record's turns as {role, content} with medtune's role names, and its problems as (field, problem): field
    'messages' or 'turn N' (from 1); problem 'type:<name>' (not a list / not an object / content not a string),
    'role:<repr>' (unknown role), 'empty' (blank content) or 'no assistant turn'."""
    turns = _as_list(turns)
    if not isinstance(turns, list):
        return [], [("messages", f"type:{type(turns).__name__}")]
    out, problems = [], []
    for i, t in enumerate(turns, 1):
        if not isinstance(t, dict):
            problems.append((f"turn {i}", f"type:{type(t).__name__}"))
            continue
        role, content = (t.get("role"), t.get("content")) if "role" in t else (t.get("from"), t.get("value"))
        role = ROLES.get(role.strip().lower()) if isinstance(role, str) else None
        if role is None:
            problems.append((f"turn {i}", f"role:{t.get('role', t.get('from'))!r}"))
        elif not isinstance(content, str):
            problems.append((f"turn {i}", f"type:{type(content).__name__}"))
        elif not content.strip():
            problems.append((f"turn {i}", "empty"))
        else:
            out.append({"role": role, "content": content})
    if not problems and not any(t["role"] == "assistant" for t in out):
        problems.append(("messages", "no assistant turn"))
    return out, problems


def _as_list(turns):
    """Parquet files read through pandas hold a list column as a numpy array."""
    return turns.tolist() if type(turns).__name__ == "ndarray" else turns


def turn_texts(r: dict) -> dict[str, str]:
    """Every turn's text by field name ('turn N', from 1), for raw (not yet validated) records too."""
    turns = _as_list(r.get("messages"))
    out = {}
    for i, t in enumerate(turns if isinstance(turns, list) else [], 1):
        if isinstance(t, dict):
            text = t.get("content", t.get("value"))
            if isinstance(text, str):
                out[f"turn {i}"] = text
    return out


def first_question(turns: list[dict]) -> str:
    """What the conversation asks first: its first user turn (its first turn if it has none)."""
    return next((t["content"] for t in turns if t["role"] == "user"), turns[0]["content"])


def answers(turns: list[dict]) -> list[str]:
    return [t["content"] for t in turns if t["role"] == "assistant"]


def training_turns(turns: list[dict], system_prompt: str | None) -> list[dict]:
    """The turns as trained: `system_prompt` first when the record has no system turn of its own; nothing after
    the last assistant turn (no answer to learn there)."""
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    turns = turns[: last + 1]
    if system_prompt and not any(t["role"] == "system" for t in turns):
        turns = [{"role": "system", "content": system_prompt}] + turns
    return turns


def plain_segments(turns: list[dict], generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """medtune's plain chat template as (text, is_answer) segments; `generation_prompt` ends them with the opening
    of the assistant's turn."""
    segments, text = [], PREAMBLE
    for t in turns:
        text += HEADERS[t["role"]]
        if t["role"] == "assistant":
            segments += [(text, False), (t["content"].strip(), True)]
            text = "\n\n"
        else:
            text += t["content"].strip() + "\n\n"
    if generation_prompt:
        segments.append((text + HEADERS["assistant"], False))
    return segments


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    """The tokenizer's chat template applied to `messages`, as text; a failure is one clear error."""
    if not getattr(tokenizer, "chat_template", None):
        raise MedtuneError(
            "data.prompt_format=chat, but the tokenizer has no chat template; use data.prompt_format=template"
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:
        raise MedtuneError(
            f"the tokenizer's chat template failed: {(str(e).splitlines() or [type(e).__name__])[0]}"
            " (use data.prompt_format=template)"
        ) from None


def template_segments(turns: list[dict], tokenizer) -> list[tuple[str, bool]]:
    """The tokenizer's chat template as (text, is_answer) segments, the turns ending with an assistant turn. The
    template is rendered once with a marker in place of each answer; the text that follows an answer loses its
    leading end-of-turn token, which the encoder puts after the answer itself (as EOS: see data.prompt_format)."""
    messages = [
        {"role": t["role"], "content": _MARK.format(i) if t["role"] == "assistant" else t["content"]}
        for i, t in enumerate(turns)
    ]
    rest = render(tokenizer, messages, generation_prompt=False)
    segments: list[tuple[str, bool]] = []
    for i, t in enumerate(turns):
        if t["role"] != "assistant":
            continue
        before, found, rest = rest.partition(_MARK.format(i))
        if not found:
            raise MedtuneError(
                "the tokenizer's chat template does not show an assistant's message verbatim; "
                "use data.prompt_format=template"
            )
        if segments and tokenizer.eos_token and before.startswith(tokenizer.eos_token):
            before = before[len(tokenizer.eos_token) :]
        segments += [(before, False), (t["content"].strip(), True)]
    return segments
