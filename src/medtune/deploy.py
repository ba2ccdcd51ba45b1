"""Is a merged model folder ready for a serving engine such as vLLM (`vllm serve DIR`)?

vLLM loads a Hugging Face folder by itself, without medtune: it picks the model class from config.json's
`architectures`, builds the tokenizer from the tokenizer files (the chat endpoint also needs a chat template), takes
its default sampling settings from generation_config.json, and reads the weights from *.safetensors. Custom model
code (an `auto_map` entry, .py files) only runs with --trust-remote-code, which a medtune folder must never need.
"""

from __future__ import annotations

import json
from pathlib import Path

from medtune.rundir import GENERATION_CONFIG, MODEL_CONFIG, TOKENIZER_CONFIG

TOKENIZER_FILES = "tokenizer.json (or vocab.json + merges.txt, or tokenizer.model)"


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _has_chat_template(folder: Path, tok_cfg) -> bool:
    if isinstance(tok_cfg, dict) and tok_cfg.get("chat_template"):
        return True
    if (folder / "chat_template.jinja").is_file() or any(folder.glob("additional_chat_templates/*.jinja")):
        return True
    data = _json(folder / "chat_template.json")
    return isinstance(data, dict) and bool(data.get("chat_template"))


def check_serving_folder(model_dir: str | Path, chat: bool = False) -> list[str]:
    """What a serving engine (vLLM) would miss in `model_dir`: one short line per problem, [] when ready.
    chat=True also asks for a chat template (needed by the OpenAI-style /v1/chat/completions endpoint)."""
    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        return [f"model folder: {folder} is not a folder"]
    problems = []

    config = _json(folder / MODEL_CONFIG)
    if not (folder / MODEL_CONFIG).is_file():
        problems.append(MODEL_CONFIG)
    elif not isinstance(config, dict):
        problems.append(f"{MODEL_CONFIG}: not valid JSON")
    else:
        archs = config.get("architectures")
        if not (isinstance(archs, list) and archs and all(isinstance(a, str) and a for a in archs)):
            problems.append(f'{MODEL_CONFIG}: architectures (the model class, e.g. ["GPT2LMHeadModel"])')
        if not config.get("model_type"):
            problems.append(f"{MODEL_CONFIG}: model_type")
        if config.get("auto_map"):
            problems.append(f"no custom code: {MODEL_CONFIG} has auto_map (needs --trust-remote-code)")

    has_tokenizer = (
        (folder / "tokenizer.json").is_file()
        or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
        or (folder / "tokenizer.model").is_file()
    )
    if not has_tokenizer:
        problems.append(f"tokenizer: {TOKENIZER_FILES}")
    tok_cfg = _json(folder / TOKENIZER_CONFIG)
    if not (folder / TOKENIZER_CONFIG).is_file():
        problems.append(TOKENIZER_CONFIG)
    elif not isinstance(tok_cfg, dict):
        problems.append(f"{TOKENIZER_CONFIG}: not valid JSON")
    elif tok_cfg.get("auto_map"):
        problems.append(f"no custom code: {TOKENIZER_CONFIG} has auto_map (needs --trust-remote-code)")
    if chat and not _has_chat_template(folder, tok_cfg):
        problems.append(f"chat template ({TOKENIZER_CONFIG} chat_template or chat_template.jinja)")

    if not (folder / GENERATION_CONFIG).is_file():
        problems.append(GENERATION_CONFIG)
    elif not isinstance(_json(folder / GENERATION_CONFIG), dict):
        problems.append(f"{GENERATION_CONFIG}: not valid JSON")

    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        problems.append("weights: *.safetensors" + (f" (found only {', '.join(others)})" if others else ""))
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        index = _json(index_path)
        wanted = set((index or {}).get("weight_map", {}).values()) if isinstance(index, dict) else set()
        if not wanted:
            problems.append("model.safetensors.index.json: no weight_map")
        for name in sorted(wanted - set(shards)):
            problems.append(f"weights: {name} (named in model.safetensors.index.json)")

    code = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    if code:
        problems.append(f"no custom code: {', '.join(code[:5])}" + (" ..." if len(code) > 5 else ""))
    return problems
