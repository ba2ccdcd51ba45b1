"""Run configuration: dataclasses loaded from YAML, overridable with `section.key=value`."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medtune.errors import MedtuneError

WIKIDOC = "medalpaca/medical_meadow_wikidoc_patient_information"

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class ModelConfig:
    name: str = "gpt2"  # hub id, local dir, a .gguf file, or random:<gpt2 size|tiny> (random weights, from a config)
    tokenizer: str | None = None  # default: same as name (a .gguf: its own); "builtin:tiny" = medtune's offline one
    quantization: str = "none"  # none | 8bit | 4bit (NF4 + double quant)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (weights of the non-quantized base)
    attn_implementation: str = "sdpa"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: chosen per architecture
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    source: str = WIKIDOC  # hub dataset id or a .json/.jsonl/.csv/.parquet file
    instruction_column: str = "instruction"
    input_column: str = "input"
    output_column: str = "output"
    prompt_format: str = "template"  # template: the two prompt templates below | chat: the tokenizer's chat template
    prompt_template: str = ALPACA_TEMPLATE
    prompt_template_no_input: str = ALPACA_NO_INPUT_TEMPLATE
    system_prompt: str | None = None  # chat format: a system message (None: none, or the template's own default)
    chat_prompt: str | None = None  # chat format: the chat template rendered around {user}; filled in by training
    default_instruction: str = "Answer this question truthfully"
    max_length: int = 512  # tokens per example (prompt + answer + EOS)
    overlong: str = "drop"  # drop | error
    completion_only_loss: bool = True
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_records: int | None = None  # use only the first N records (quick runs)
    seed: int = 42


@dataclass
class TrainConfig:
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "auto"  # auto: paged_adamw_8bit for 4bit/8bit on CUDA, adamw_torch otherwise
    bf16: str = "auto"  # auto | true | false
    packing: bool = False
    eval_steps: int = 50
    logging_steps: int = 10
    save_steps: int = 100
    save_total_limit: int = 2
    eval_at_end: bool = False
    eval_on_start: bool = False  # validation loss of the untrained adapter at step 0 (the start of the curve)
    seed: int = 42
    num_workers: int = 0
    report_to: str = "tensorboard"  # tensorboard | none
    max_memory_gib: float | None = None  # CUDA: pick batch_tokens and gradient checkpointing to fit this peak
    batch_tokens: int | None = None  # with packing: batches of whole examples up to this many tokens (else batch_size examples)
    compile: bool = False  # torch.compile the decoder blocks and the loss (CUDA)


@dataclass
class GenerateConfig:
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    greedy: bool = False
    seed: int = 42


@dataclass
class EvalConfig:
    num_samples: int = 50
    max_new_tokens: int = 128
    batch_size: int = 8
    split: str = "test"
    greedy: bool = True  # false: sample with the run's generate settings (temperature, top_p, top_k, seed)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/medtune"


CHOICES = {
    "model.quantization": ("none", "8bit", "4bit"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "data.overlong": ("drop", "error"),
    "train.bf16": ("auto", "true", "false"),
    "train.report_to": ("tensorboard", "none"),
    "data.prompt_format": ("template", "chat"),
}


def _coerce(key: str, value, typ):
    """Check `value` against the annotated type `typ`; ints are accepted where floats are expected."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise MedtuneError(f"config key '{key}' must be a list of strings, got {value!r}")
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise MedtuneError(f"config key '{key}' must be true or false, got {value!r}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, bool):  # yaml turns `true` into a bool; keep choice keys usable
        value = "true" if value else "false"
    if typ is str and isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise MedtuneError(f"config key '{key}' must be {typ.__name__}, got {value!r}")
    return value


def _apply(obj, key_prefix: str, values: dict):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{key_prefix}{k}"
        if k not in names:
            raise MedtuneError(f"unknown config key '{key}'")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise MedtuneError(f"config key '{key}' must be a mapping")
            _apply(cur, key + ".", v)
        else:
            v = _coerce(key, v, hints[k])
            if key in CHOICES and v not in CHOICES[key]:
                raise MedtuneError(f"config key '{key}' must be one of {', '.join(CHOICES[key])}, got {v!r}")
            setattr(obj, k, v)


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise MedtuneError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nested(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), **top) -> Config:
    """Build a Config from an optional YAML file, then `section.key=value` overrides, then keyword values
    (e.g. output_dir=..., model__name=...) given by the CLI's dedicated flags."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MedtuneError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise MedtuneError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise MedtuneError(f"config file {path} must hold a mapping of sections")
        _apply(cfg, "", values)
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, "", _nested(key, value))
    for key, value in top.items():
        if value is not None:
            _apply(cfg, "", _nested(key.replace("__", "."), value))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    d, t, m = cfg.data, cfg.train, cfg.model
    if not (0 <= d.val_fraction < 1 and 0 <= d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1):
        raise MedtuneError("data.val_fraction and data.test_fraction must be in [0, 1) and sum to less than 1")
    if d.max_length < 8:
        raise MedtuneError("data.max_length must be at least 8")
    for key, value in (("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                       ("model.lora_r", m.lora_r), ("train.eval_steps", t.eval_steps),
                       ("train.save_steps", t.save_steps), ("train.logging_steps", t.logging_steps)):
        if value < 1:
            raise MedtuneError(f"config key '{key}' must be >= 1, got {value}")
    if t.batch_tokens is not None and t.batch_tokens < d.max_length:
        raise MedtuneError(f"train.batch_tokens ({t.batch_tokens}) must be at least data.max_length ({d.max_length})")
    if t.max_memory_gib is not None and t.max_memory_gib <= 0:
        raise MedtuneError("train.max_memory_gib must be positive")
    if "{instruction}" not in d.prompt_template and "{input}" not in d.prompt_template:
        raise MedtuneError("data.prompt_template must contain {instruction} or {input}")
    if d.chat_prompt and "{user}" not in d.chat_prompt:
        raise MedtuneError("data.chat_prompt must contain {user} (or leave it empty: training renders the chat template)")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(values: dict) -> Config:
    cfg = Config()
    _apply(cfg, "", values)
    return cfg
