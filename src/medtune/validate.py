"""The one validation step: every refusal of a bad config value or command-line flag, each one line (MedtuneError).

- `validate(cfg)`: every check that needs only the config. load_config and override (the door every config goes
  through, at the end of this module) run it, so `train`, `generate` and `data audit` refuse a bad value before any
  file is written or any model loads.
- `validate_against_model(cfg, context)`: the checks that need the loaded model (data.max_length against its
  context); `train` runs it once the model is loaded, before the first file of the run is written.
- `validate_machine(cfg)`: the config against this machine and launcher (CUDA, bf16, FSDP): torch, but no model.
- `validate_generate_flags`, `validate_eval_flags`, `validate_serve_limits`: the flags of `generate`, `eval` and
  `serve` that are not config keys.

Only the config's declarations are imported here (no torch), so that these refusals stay fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from medtune.config import (
    GPT2_SHAPES,
    Config,
    ModelConfig,
    apply_values,
    nested_value,
    parse_override,
    read_yaml_mapping,
)
from medtune.errors import MedtuneError, Problems

if TYPE_CHECKING:
    from medtune.serving.limits import Limits

# the numeric bounds a config field declares (config.opt(..., min=, max=, gt=, lt=)): test, and the word shown
BOUNDS = {
    "min": (lambda v, b: v >= b, ">="),
    "max": (lambda v, b: v <= b, "<="),
    "gt": (lambda v, b: v > b, ">"),
    "lt": (lambda v, b: v < b, "<"),
}


def check_bounds(obj, prefix: str = "", problems: Problems | None = None) -> None:
    """The numeric bounds declared with the fields of a config section (and of the sections inside it): every field
    out of bounds is noted in `problems` (raised at the first without it)."""
    found = problems or Problems()
    for f in dataclasses.fields(obj):
        value, meta, key = getattr(obj, f.name), f.metadata, f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_bounds(value, key + ".", found)
            continue
        if value is None or isinstance(value, (bool, str, list)):
            continue
        for bound, (ok, word) in BOUNDS.items():
            if bound in meta and not ok(value, meta[bound]):
                with found.check():
                    raise MedtuneError(f"config key '{key}' must be {word} {meta[bound]}, got {value}")
    if problems is None:
        found.refuse()


# Llama-architecture shapes for random:<name> beside config.GPT2_SHAPES: the real models' dimensions, RoPE and embedding
# tying as in their config.json (LlamaConfig / Qwen2Config keyword arguments; "arch" picks the class; Qwen2 has q/k/v
# biases by design). The vocabulary is the tokenizer's (medtune.model.build_random), so parameter counts match the real
# models' only with their own tokenizers (llama-8b: 8.03B with Llama 3's 128,256 tokens).
_LLAMA3_ROPE = dict(
    rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)
_LLAMA = dict(arch="llama", rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072)
_QWEN = dict(arch="qwen2", rope_theta=1000000.0, rms_norm_eps=1e-6)


def _shape(base: dict, hidden: int, layers: int, heads: int, kv: int, inter: int, tied: bool, **kw) -> dict:
    return dict(
        base,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        tie_word_embeddings=tied,
        **kw,
    )


LLAMA_SHAPES: dict[str, dict] = {
    # CPU tests: 64 x 2 layers, GQA 4/2, Llama 3's RoPE scaled down to its 512 positions
    "llama-tiny": _shape(
        _LLAMA,
        64,
        2,
        4,
        2,
        128,
        True,
        max_position_embeddings=512,
        rope_scaling=dict(_LLAMA3_ROPE, factor=32.0, original_max_position_embeddings=256),
    ),
    "llama-1b": _shape(_LLAMA, 2048, 16, 32, 8, 8192, True, rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),  # 3.2-1B
    "llama-3b": _shape(_LLAMA, 3072, 28, 24, 8, 8192, True, rope_scaling=dict(_LLAMA3_ROPE, factor=32.0)),  # 3.2-3B
    "llama-8b": _shape(_LLAMA, 4096, 32, 32, 8, 14336, False, rope_scaling=dict(_LLAMA3_ROPE, factor=8.0)),  # 3.1-8B
    "qwen2.5-0.5b": _shape(_QWEN, 896, 24, 14, 2, 4864, True, max_position_embeddings=32768),
    "qwen2.5-1.5b": _shape(_QWEN, 1536, 28, 12, 2, 8960, True, max_position_embeddings=131072),
    "qwen2.5-7b": _shape(_QWEN, 3584, 28, 28, 4, 18944, False, max_position_embeddings=131072),
}

# the real models' vocabularies (their tokenizers'), for benchmarks that want the real embedding and head sizes
REAL_VOCAB = {"llama-1b": 128256, "llama-3b": 128256, "llama-8b": 128256}
REAL_VOCAB.update({"qwen2.5-0.5b": 151936, "qwen2.5-1.5b": 151936, "qwen2.5-7b": 152064})


def random_shapes() -> list[str]:
    """Every name that random:<name> takes: the GPT-2 shapes, then the Llama-architecture ones."""
    return [*GPT2_SHAPES, *LLAMA_SHAPES]


def check_random_name(name: str) -> None:
    """A random:<shape> model name names a known GPT-2 or Llama-architecture shape."""
    if name.startswith("random:") and name.split(":", 1)[1] not in random_shapes():
        raise MedtuneError(f"unknown random model '{name}'; choose random:{' random:'.join(random_shapes())}")


def validate(cfg: Config, problems: Problems | None = None) -> None:
    """Every check that needs only the config, each problem noted in `problems` (or refused together at the end
    without it). It runs before any file is written; the checks that need the model are validate_against_model's."""
    found = problems or Problems()
    check_bounds(cfg, problems=found)
    for check in CONFIG_CHECKS:
        with found.check():
            check(cfg)
    found.refuse()


def _model_name(cfg: Config) -> None:
    check_random_name(cfg.model.name)


def _split(cfg: Config) -> None:
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1:
        raise MedtuneError("data.val_fraction + data.test_fraction must be less than 1")


def _steps(cfg: Config) -> None:
    t = cfg.train
    if t.max_steps == 0 or t.max_steps < -1:
        raise MedtuneError(f"config key 'train.max_steps' must be -1 (use train.epochs) or >= 1, got {t.max_steps}")


def _batch_tokens(cfg: Config) -> None:
    t, d = cfg.train, cfg.data
    if t.batch_tokens is not None and t.batch_tokens < d.max_length:
        raise MedtuneError(f"train.batch_tokens ({t.batch_tokens}) must be at least data.max_length ({d.max_length})")


def _report_to(cfg: Config) -> None:
    t = cfg.train
    if "none" in t.report_to and len(t.report_to) > 1:
        raise MedtuneError(f"train.report_to: 'none' cannot be combined with trackers, got {','.join(t.report_to)}")


def _templates(cfg: Config) -> None:
    d = cfg.data
    if "{instruction}" not in d.prompt_template and "{input}" not in d.prompt_template:
        raise MedtuneError("data.prompt_template must contain {instruction} or {input}")
    for key in ("prompt_template", "prompt_template_no_input"):
        try:
            getattr(d, key).format(instruction="", input="")
        except (KeyError, IndexError, ValueError) as e:
            raise MedtuneError(
                f"data.{key} is not a valid template ({type(e).__name__}: {e}); only {{instruction}} "
                "and {input} may appear in braces (write {{ and }} for literal braces)"
            ) from None
    if d.chat_prompt and "{user}" not in d.chat_prompt:
        raise MedtuneError(
            "data.chat_prompt must contain {user} (or leave it empty: training renders the chat template)"
        )


def _output_dir(cfg: Config) -> None:
    if not cfg.output_dir.strip():
        raise MedtuneError("output_dir must not be empty")


CONFIG_CHECKS = (_model_name, _split, _steps, _batch_tokens, _report_to, _templates, _output_dir)


def validate_against_model(cfg: Config, context: int | None) -> None:
    """The config checks that need the loaded model, given its context length (model.context_length): run before
    training starts and before any file is written."""
    if context is not None and cfg.data.max_length > context:
        raise MedtuneError(
            f"data.max_length={cfg.data.max_length} is longer than the model's context of {context} "
            f"tokens; set data.max_length <= {context}"
        )


def check_quantization(cfg: ModelConfig) -> None:
    """8-bit weights need CUDA (bitsandbytes' 8-bit kernels); training checks it up front, loading a run again."""
    from medtune.machine import cuda

    if cfg.quantization == "8bit" and not cuda():
        raise MedtuneError("model.quantization=8bit needs a CUDA GPU; use 4bit (which also runs on CPU) or none")


def validate_machine(cfg: Config) -> None:
    """Every check of the config against this machine and launcher (torch alone: before any model loads)."""
    import os

    from medtune.machine import optimizer_name, use_bf16

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):  # set by accelerate launch for FSDP
        raise MedtuneError(
            "FSDP is not supported (untested; on CPU accelerate runs DDP instead, and 4-bit bases are "
            "not sharded): launch with torchrun or accelerate launch --multi_gpu (DDP)"
        )
    use_bf16(cfg)  # each refuses what this machine cannot do (train.bf16=true, a CUDA-only optimizer)
    optimizer_name(cfg)
    check_quantization(cfg.model)


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise MedtuneError(f"{flag} must be >= 1, got {value}")


def validate_generate_flags(batch_size: int, question: str | None, input: str | None, output: str | None) -> None:
    """`generate`'s own flags (its sampling flags are config keys: override checks them)."""
    _at_least_one("--batch-size", batch_size)
    if input and not output:
        raise MedtuneError("--input needs --output FILE.jsonl for the answers")
    if not input and not question:
        raise MedtuneError("give a question, or --input FILE")


def validate_eval_flags(num_samples: int) -> None:
    """`eval`'s own flags (--split and --data are checked as they are read: evaluate.load_eval_records)."""
    if num_samples < 0:
        raise MedtuneError(f"--num-samples must be 0 or more, got {num_samples}")


WORKER_MODES = ("auto", "process", "thread")


def validate_serve_limits(lim: Limits) -> None:
    """`serve`'s limits (--queue-size, --max-tokens, --max-prompt-tokens, --max-batch-size)."""
    for flag, value in (
        ("--queue-size", lim.queue_size),
        ("--max-tokens", lim.max_tokens),
        ("--max-prompt-tokens", lim.max_prompt_tokens),
        ("--max-batch-size", lim.max_batch_size),
    ):
        _at_least_one(flag, value)
    if lim.worker not in WORKER_MODES:
        raise MedtuneError(f"--worker must be one of {', '.join(WORKER_MODES)}, got '{lim.worker}'")


def check_output_file(path: str | Path, flag: str, example: str) -> Path:
    """A file to write (`flag` names it in the message): not a folder, in a folder that exists."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise MedtuneError(f"{flag} {path} is a folder; give a file name such as {example}")
    if not path.parent.is_dir():
        raise MedtuneError(f"{flag} {path}: folder {path.parent} not found")
    return path


def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """A folder to write into: absent or a folder."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise MedtuneError(f"{flag} {path} exists and is not a folder")
    return path


# ---------------------------------------------------------------- the door every config goes through


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), **top) -> Config:
    """Build a Config from an optional YAML file, then `section.key=value` overrides, then keyword values
    (e.g. output_dir=..., model__name=...) given by the CLI's dedicated flags; then validate it (medtune.validate)."""
    cfg, problems = Config(), Problems()
    if path is not None:
        with problems.check():
            apply_values(cfg, "", read_yaml_mapping(Path(path), "config file"), problems)
    for text in overrides:
        with problems.check():
            key, value = parse_override(text)
            apply_values(cfg, "", nested_value(key, value), problems)
    for key, value in top.items():
        if value is not None:
            apply_values(cfg, "", nested_value(key.replace("__", "."), value), problems)
    validate(cfg, problems)  # every problem of the file, the overrides and the values together, refused once
    return cfg


def override(cfg: Config, values: dict) -> Config:
    """`cfg` with dotted keys set (e.g. {"generate.top_p": 0.8}; None values skipped), validated (medtune.validate)."""
    problems = Problems()
    for key, value in values.items():
        if value is not None:
            apply_values(cfg, "", nested_value(key, value), problems)
    validate(cfg, problems)
    return cfg
