"""Run configuration: dataclasses loaded from YAML, overridable with `section.key=value`."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from medtune.errors import MedtuneError, Problems, did_you_mean

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

# GPT-2 family shapes, so that `random:<name>` builds the architecture offline (random weights; medtune.model).
GPT2_SHAPES: dict[str, dict[str, Any]] = {  # GPT2Config keyword arguments
    "tiny": dict(n_layer=2, n_head=4, n_embd=128, n_positions=512, initializer_range=0.1),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def opt(default, help: str, **kw):
    """A config field with its one-line help (`medtune train --help-config`, docs/configuration.md)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def bounds(section, name: str) -> dict:
    """A config field's numeric bounds as pydantic's Field keywords (ge, le, gt, lt), for a check elsewhere (the HTTP
    schema) to hold the same bounds as the config."""
    meta = next(f.metadata for f in dataclasses.fields(section) if f.name == name)
    return {word: meta[key] for key, word in (("min", "ge"), ("max", "le"), ("gt", "gt"), ("lt", "lt")) if key in meta}


Quantization = Literal["none", "8bit", "4bit"]
Optimizer = Literal[
    "auto",
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adagrad",
    "rmsprop",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "lion_8bit",
    "paged_lion_8bit",
    "lion_32bit",
]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt"
]
Speedup = Literal["gelu", "norms", "varlen", "chunked_loss", "lean_attention", "host_memory"]
# transformers' reporting integrations (medtune.training.trackers knows their packages); kubeflow (a server, not a
# package) is left out
Tracker = Literal[
    "none",
    "tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "trackio",
    "clearml",
    "dvclive",
    "neptune",
    "swanlab",
    "codecarbon",
    "azure_ml",
    "dagshub",
    "flyte",
]


@dataclass
class ModelConfig:
    name: str = opt(
        "gpt2",
        "hub id, local folder, a .gguf file, or random:<shape> (random weights, built offline: a GPT-2 size, tiny, "
        "llama-tiny, llama-1b/3b/8b, qwen2.5-0.5b/1.5b/7b)",
    )
    tokenizer: str | None = opt(
        None, "tokenizer folder or hub id (default: the model's own); builtin:tiny is medtune's offline one"
    )
    quantization: Quantization = opt("none", "none, 8bit (CUDA), or 4bit: QLoRA's NF4 with double quantization")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "weights of a non-quantized base (auto: bf16 on a capable GPU, else float32)"
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = opt("sdpa", "attention kernel")
    lora_r: int = opt(16, "LoRA rank", min=1)
    lora_alpha: float = opt(32, "LoRA scaling numerator (scale = alpha / r)", gt=0)
    lora_dropout: float = opt(0.05, "dropout on the LoRA input", min=0, lt=1)
    lora_targets: list[str] | None = opt(None, "module names to adapt (default: every linear layer of the blocks)")
    lora_rslora: bool = opt(False, "rank-stabilized LoRA: scale by alpha / sqrt(r) instead of alpha / r")
    lora_dora: bool = opt(False, "DoRA: learn each adapted weight's magnitude apart from its direction (slower)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward: less memory, slower")


@dataclass
class DataConfig:
    source: str = opt(WIKIDOC, "hub dataset id, a .json/.jsonl/.csv/.parquet file, or builtin:sample")
    instruction_column: str = opt("instruction", "column holding the instruction")
    input_column: str = opt("input", "column holding the question / input (may be empty)")
    output_column: str = opt("output", "column holding the answer")
    chat_column: str | None = opt(
        None,
        "column of chat records (turns {role, content} or ShareGPT {from, value}); "
        "unset: a messages or conversations column when the data has no "
        "instruction/input/output columns (training saves the one found)",
    )
    prompt_format: Literal["template", "chat"] = opt(
        "template", "template: the prompt templates below; chat: the tokenizer's chat template"
    )
    prompt_template: str = opt(ALPACA_TEMPLATE, "prompt for records with an input ({instruction}, {input})")
    prompt_template_no_input: str = opt(ALPACA_NO_INPUT_TEMPLATE, "prompt for records without an input")
    system_prompt: str | None = opt(
        None, "a system message: in chat format, and for chat records that have none of their own"
    )
    chat_prompt: str | None = opt(None, "chat format: the chat template rendered around {user} (set by training)")
    default_instruction: str = opt("Answer this question truthfully", "instruction used for a bare question")
    max_length: int = opt(512, "tokens per example (prompt + answer + EOS); at most the model's context", min=8)
    overlong: Literal["drop", "error"] = opt("drop", "what to do with longer examples")
    completion_only_loss: bool = opt(True, "loss on answer tokens only (the prompt is masked)")
    val_fraction: float = opt(0.05, "share of questions held out for validation", min=0, lt=1)
    test_fraction: float = opt(0.05, "share of questions held out for testing", min=0, lt=1)
    max_records: int | None = opt(None, "use only the first N records (quick runs)", min=1)
    seed: int = opt(42, "seed of the split")
    phi: Literal["error", "warn", "redact", "off"] = opt(
        "error", "protected health information found in the data: stop, warn, replace with [TYPE], or do not check"
    )
    phi_reviewed: str | None = opt(
        None, "a JSON file of reviewed findings (`medtune data audit` writes phi_review.json) that the guard lets pass"
    )


@dataclass
class TrainConfig:
    epochs: float = opt(1.0, "passes over the training split (ignored when max_steps > 0)", gt=0)
    max_steps: int = opt(-1, "optimizer steps (-1: set by epochs)")
    batch_size: int = opt(8, "examples per batch and process (without packing)", min=1)
    grad_accum: int = opt(1, "batches per optimizer step", min=1)
    learning_rate: float = opt(2e-4, "peak learning rate", gt=0, max=1)
    lr_scheduler: Scheduler = opt("cosine", "learning-rate schedule after warm-up")
    warmup_ratio: float = opt(0.03, "share of the steps spent warming up", min=0, lt=1)
    weight_decay: float = opt(0.0, "AdamW weight decay", min=0)
    max_grad_norm: float = opt(1.0, "gradient clipping (0: off)", min=0)
    optim: Optimizer = opt("auto", "optimizer (auto: paged_adamw_8bit for 4bit/8bit on CUDA, else adamw_torch)")
    bf16: Literal["auto", "true", "false"] = opt("auto", "bf16 autocast (auto: when the GPU supports it)")
    packing: bool = opt(False, "padding-free packing of whole examples")
    eval_steps: int = opt(50, "steps between validation-loss evaluations", min=1)
    logging_steps: int = opt(10, "steps between log lines", min=1)
    save_steps: int = opt(100, "steps between checkpoints (for --resume)", min=1)
    save_total_limit: int = opt(2, "checkpoints kept", min=1)
    eval_at_end: bool = opt(False, "run `medtune eval` when training ends")
    eval_on_start: bool = opt(False, "validation loss of the untrained adapter at step 0 (the start of the curve)")
    seed: int = opt(42, "seed of the weights' init, dropout and batch order")
    num_workers: int = opt(0, "data loader worker processes", min=0)
    report_to: list[Tracker] = opt(
        ["tensorboard"],
        "experiment trackers, one or a list (wandb,mlflow); they get "
        "the config, the curves and the final metrics; tensorboard "
        "writes under logs/; none: no tracker",
    )
    max_memory_gib: float | None = opt(None, "CUDA: choose tokens per batch and checkpointing to fit this peak", gt=0)
    batch_tokens: int | None = opt(None, "with packing: batches of whole examples up to this many tokens", min=1)
    compile: Literal["auto", "true", "false"] = opt(
        "auto",
        "torch.compile the decoder blocks and the loss (CUDA): true, false, or auto (once the first steps are "
        "timed, when the eager time left pays back the compiling)",
    )
    neftune_alpha: float | None = opt(None, "NEFTune: noise of this scale on the input embeddings while training", gt=0)
    disable: list[Speedup] = opt(
        [],
        "speed-ups to turn off, for ablations: gelu, norms, varlen, chunked_loss, lean_attention, host_memory (CPU)",
    )


@dataclass
class GenerateConfig:
    max_new_tokens: int = opt(200, "most tokens in an answer", min=1, max=100_000)
    temperature: float = opt(0.7, "sampling temperature (0: greedy)", min=0, max=10)
    top_p: float = opt(0.9, "nucleus sampling: smallest set of tokens with this much probability", gt=0, max=1)
    top_k: int = opt(50, "sample among the k most likely tokens (0: no limit)", min=0)
    repetition_penalty: float = opt(1.1, "divide the logits of tokens already present (1: off)", gt=0, max=10)
    min_p: float = opt(0.0, "drop tokens less likely than min_p x the most likely one (0: off)", min=0, lt=1)
    no_repeat_ngram: int = opt(0, "never repeat an n-gram of this size within an answer (0: off)", min=0)
    loop_guard: int = opt(
        32,
        "stop an answer once half the 4-grams of its last N tokens repeat earlier ones, and cut the repeats (0: off)",
        min=0,
    )
    greedy: bool = opt(False, "greedy decoding instead of sampling")
    seed: int = opt(42, "sampling seed (answers are reproducible)", min=0, max=2**32 - 1)


@dataclass
class EvalConfig:
    num_samples: int = opt(300, "questions to generate answers for (300: a ROUGE-L interval of about +-0.015)", min=0)
    max_new_tokens: int | None = opt(
        None,
        "most tokens per generated answer (None: 512, or more when the reference "
        "answers are longer; always within the model's context)",
        min=1,
        max=100_000,
    )
    batch_size: int = opt(64, "questions per generation batch (and records per loss batch)", min=1)
    split: Literal["test", "validation"] = opt("test", "saved split to evaluate on")
    greedy: bool = opt(
        False,
        "false: decode like `medtune generate` (the run's generate settings as they are, seeded); "
        "true: greedy decoding without repetition penalty",
    )
    bootstrap: int = opt(1000, "bootstrap resamples for the 95% intervals", min=0)
    benchmark_limit: int | None = opt(
        None, "questions per multiple-choice benchmark (a seeded subset; None: all)", min=1
    )
    reuse_base: bool = opt(
        True,
        "take the base model's scores from an earlier eval of the same base, inputs and settings "
        "(kept in $MEDTUNE_CACHE or ~/.cache/medtune; false: score it again and replace them)",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = opt("runs/medtune", "where the run folder goes")


def _coerce(key: str, value, typ):
    """Check `value` against the annotated type `typ`; ints are accepted where floats are expected."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        choices = typing.get_args(typ)
        if isinstance(value, bool):  # yaml turns `true` into a bool; keep choice keys such as train.bf16 usable
            value = "true" if value else "false"
        if value not in choices:
            raise MedtuneError(f"config key '{key}' must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise MedtuneError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(typ)
        if item is str and not all(isinstance(v, str) for v in value):
            raise MedtuneError(f"config key '{key}' must be a list of strings, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise MedtuneError(f"config key '{key}' must be true or false, got {value!r}")
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise MedtuneError(f"config key '{key}' must be {typ.__name__}, got {value!r}")
    if typ is float and not math.isfinite(value):
        raise MedtuneError(f"config key '{key}' must be a finite number, got {value!r}")
    return value


def apply_values(obj, key_prefix: str, values: dict, problems: Problems | None = None):
    """Set the config values of a nested mapping; each bad key or value is noted in `problems` (raised at once
    without it)."""
    found = problems or Problems()
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in values.items():
        key = f"{key_prefix}{k}"
        with found.check():
            if k not in names:
                raise MedtuneError(f"unknown config key '{key}'{did_you_mean(key, [r[0] for r in help_rows()])}")
            cur = getattr(obj, k)
            if dataclasses.is_dataclass(cur):
                if not isinstance(v, dict):
                    raise MedtuneError(f"config key '{key}' must be a mapping")
                apply_values(cur, key + ".", v, found)
            else:
                setattr(obj, k, _coerce(key, v, hints[k]))
    if problems is None:
        found.refuse()


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise MedtuneError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def nested_value(key: str, value) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML file holding a mapping (a preset, or a run's config.yaml): missing, empty, corrupt or not a mapping
    is one clear error."""
    if not path.is_file():
        raise MedtuneError(f"{what} not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise MedtuneError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise MedtuneError(f"{what} {path} is empty or not a mapping of config sections")
    return values


def help_rows(obj=None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every config key, from the field declarations."""
    obj = obj or Config()
    hints = typing.get_type_hints(type(obj))
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += help_rows(value, f"{prefix}{f.name}.")
            continue
        typ = hints[f.name]
        item = typing.get_args(typ)[0] if typing.get_origin(typ) is list else None
        if typing.get_origin(typ) is Literal:
            shown = " | ".join(map(str, typing.get_args(typ)))
        elif typing.get_origin(item) is Literal:
            shown = "list of " + " | ".join(map(str, typing.get_args(item)))
        else:
            shown = str(typ).replace("typing.", "").replace("<class '", "").replace("'>", "")
        default = value if not isinstance(value, str) or len(value) < 40 else value[:37].replace("\n", " ") + "..."
        rows.append(
            (
                f"{prefix}{f.name}",
                shown,
                repr(default) if isinstance(default, str) else str(default),
                f.metadata.get("help", ""),
            )
        )
    return rows


def help_text() -> str:
    rows = help_rows()
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k.ljust(width)}  {h} [{t}; default {d}]" for k, t, d, h in rows)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def from_dict(values: dict) -> Config:
    cfg = Config()
    apply_values(cfg, "", values)
    return cfg


def json_schema() -> dict:
    """A JSON Schema of a config file, so that an editor validates and completes a YAML config (the presets name it
    in their first line). Types and choices come from pydantic's reading of the dataclasses; each key's help and
    bounds from its declaration; unknown keys are refused, as load_config refuses them."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(Config).json_schema()
    schema.update(title="medtune config", additionalProperties=False)
    words = {"min": "minimum", "max": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
    for section in (Config, ModelConfig, DataConfig, TrainConfig, GenerateConfig, EvalConfig):
        node = schema if section is Config else schema["$defs"][section.__name__]
        node["additionalProperties"] = False
        for f in dataclasses.fields(section):
            prop = node["properties"][f.name]
            prop.pop("title", None)
            if "help" in f.metadata:
                prop["description"] = f.metadata["help"]
            prop.update({words[k]: v for k, v in f.metadata.items() if k in words})
    return schema
