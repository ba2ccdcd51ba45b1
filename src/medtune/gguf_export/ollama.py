"""GGUF export: ollama (see medtune.gguf_export)."""

from __future__ import annotations

from pathlib import Path

from medtune.errors import MedtuneError, first_line
from medtune.gguf_export.common import (
    KEY_CHAT_PROMPT,
    KEY_DEFAULT_INSTRUCTION,
    KEY_PROMPT_FORMAT,
    KEY_PROMPT_TEMPLATE,
    require_gguf,
)

# ------------------------------------------------------------------------------------------------------- Ollama


def read_gguf_metadata(gguf_file: Path, keys=None) -> dict:
    """String/number metadata of a GGUF file (arrays left out), optionally only `keys`."""
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(str(gguf_file))
    except Exception as e:
        raise MedtuneError(f"cannot read GGUF file {gguf_file}: {first_line(e)}") from None
    out = {}
    for name, field in reader.fields.items():
        if keys is not None and name not in keys:
            continue
        if not field.types or field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        value = field.contents()
        out[name] = value
    return out


def _go_template_text(text: str) -> str:
    """Literal text for a Go template (Ollama's TEMPLATE): `{{` would open an action."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_modelfile(gguf_file: Path) -> str:
    """An Ollama Modelfile for a GGUF written by export_gguf, prompting exactly as medtune does: the run's prompt
    template (template format: the question goes in {input}, with the run's default instruction) or its rendered
    chat turn (chat format), its stop token and its sampling defaults. Save it beside the file as `Modelfile`."""
    gguf_file = Path(gguf_file)
    meta = read_gguf_metadata(gguf_file)
    mark = "\x01PROMPT\x01"
    fmt = meta.get(KEY_PROMPT_FORMAT)
    template = None
    try:
        if fmt == "chat" and meta.get(KEY_CHAT_PROMPT):
            template = meta[KEY_CHAT_PROMPT].format(user=mark)
        elif meta.get(KEY_PROMPT_TEMPLATE):
            instruction = meta.get(KEY_DEFAULT_INSTRUCTION, "Answer this question truthfully")
            template = meta[KEY_PROMPT_TEMPLATE].format(instruction=instruction, input=mark)
    except (KeyError, IndexError, ValueError) as e:
        raise MedtuneError(
            f"{gguf_file}: medtune's prompt template in the file cannot be filled in: {first_line(e)}"
        ) from None
    lines = [f"FROM ./{gguf_file.name}"]
    if template is not None:
        body = _go_template_text(template).replace(mark, "{{ .Prompt }}")
        lines.append(f'TEMPLATE """{body}"""')
    tokens = _token_list(gguf_file)
    eos = meta.get("tokenizer.ggml.eos_token_id")
    if tokens is not None and isinstance(eos, int) and 0 <= eos < len(tokens):
        lines.append(f'PARAMETER stop "{tokens[eos]}"')
    for key, param in (
        ("general.sampling.temp", "temperature"),
        ("general.sampling.top_p", "top_p"),
        ("general.sampling.top_k", "top_k"),
        ("general.sampling.min_p", "min_p"),
        ("general.sampling.penalty_repeat", "repeat_penalty"),
    ):
        if key in meta:
            value = meta[key]
            lines.append(f"PARAMETER {param} {round(value, 6) if isinstance(value, float) else value}")
    return "\n".join(lines) + "\n"


def _token_list(gguf_file: Path) -> list[str] | None:
    gguf = require_gguf()
    field = gguf.GGUFReader(str(gguf_file)).fields.get("tokenizer.ggml.tokens")
    return list(field.contents()) if field is not None else None
