"""GGUF export: writer (see medtune.gguf_export)."""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medtune.errors import MedtuneError
from medtune.gguf_export.arch import ARCH_CLASSES, Tensor
from medtune.gguf_export.common import (
    ARCHITECTURES,
    DTYPES,
    F16_MAX,
    KEY_CHAT_PROMPT,
    KEY_DEFAULT_INSTRUCTION,
    KEY_PROMPT_FORMAT,
    KEY_PROMPT_TEMPLATE,
    KEY_PROMPT_TEMPLATE_NO_INPUT,
    KEY_SYSTEM_PROMPT,
    KEY_VERSION,
    Q8_BLOCK,
    Weights,
    read_json,
    read_medtune_config,
    require_gguf,
    weight_files,
)
from medtune.gguf_export.vocab import read_tokenizer, write_vocab
from medtune.rundir import MODEL_CONFIG

if TYPE_CHECKING:
    from gguf import GGMLQuantizationType

log = logging.getLogger("medtune.gguf_export")

# ----------------------------------------------------------------------------------------------------- metadata


def is_hub_id(name: str) -> bool:
    """A hub id such as gpt2 or org/name, as opposed to a local path or file (kept out of shared metadata)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", name)) and not re.search(
        r"\.(gguf|jsonl?|csv|parquet|txt|bin|safetensors)$", name, re.IGNORECASE
    )


def _section(cfg: dict, name: str) -> dict:
    """A section of the medtune config as a dict ({} when missing or not a mapping)."""
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def _write_medtune_metadata(writer, cfg: dict, model_dir: Path, arch: str) -> None:
    from medtune import __version__
    from medtune.notice import NOTICE

    data, model, gen = (_section(cfg, name) for name in ("data", "model", "generate"))
    writer.add_string(KEY_VERSION, __version__)
    fmt = data.get("prompt_format") if cfg else None
    for key, value in (
        (KEY_PROMPT_FORMAT, fmt),
        (KEY_PROMPT_TEMPLATE, data.get("prompt_template")),
        (KEY_PROMPT_TEMPLATE_NO_INPUT, data.get("prompt_template_no_input")),
        (KEY_CHAT_PROMPT, data.get("chat_prompt")),
        (KEY_SYSTEM_PROMPT, data.get("system_prompt")),
        (KEY_DEFAULT_INSTRUCTION, data.get("default_instruction")),
    ):
        if isinstance(value, str) and value:
            writer.add_string(key, value)

    base = model.get("name")
    about = f"{model_dir.name}: a {arch} model"
    if cfg:
        about += " fine-tuned with medtune (LoRA adapter merged into the base weights)"
        if isinstance(base, str) and (base.startswith("random:") or is_hub_id(base)):
            about += f"; base model {base}"
        if isinstance(base, str) and is_hub_id(base):
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, base)
        source = data.get("source")
        if isinstance(source, str) and (source.startswith("builtin:") or is_hub_id(source)):
            about += f"; training data {source}"  # local paths stay out of a file meant to be shared
        if fmt == "chat":
            about += ". Prompt: the chat template (tokenizer.chat_template), as in medtune.chat_prompt"
        elif fmt:
            about += ". Prompt: medtune.prompt_template ({instruction}, {input}) or medtune.prompt_template_no_input"
    writer.add_description(f"{about}. {NOTICE}")

    if gen:  # llama.cpp reads these as its sampling defaults
        greedy = bool(gen.get("greedy")) or float(gen.get("temperature", 1.0) or 0.0) <= 0
        writer.add_sampling_temp(0.0 if greedy else float(gen.get("temperature", 0.7)))
        for key, setter, kind in (
            ("top_p", writer.add_sampling_top_p, float),
            ("top_k", writer.add_sampling_top_k, int),
            ("min_p", writer.add_sampling_min_p, float),
            ("repetition_penalty", writer.add_sampling_penalty_repeat, float),
        ):
            if isinstance(gen.get(key), (int, float)) and not isinstance(gen.get(key), bool):
                setter(kind(gen[key]))


# ------------------------------------------------------------------------------------------------------ writing


def _encode(gguf, t: Tensor, w: np.ndarray, dtype: str) -> tuple[np.ndarray, GGMLQuantizationType]:
    """(data to write, GGML type) of one tensor."""
    Q = gguf.GGMLQuantizationType
    if t.kind == "f32" or dtype == "f32":
        return np.ascontiguousarray(w, dtype=np.float32), Q.F32
    if dtype == "q8_0" and w.shape[-1] % Q8_BLOCK == 0:
        return gguf.quants.quantize(np.ascontiguousarray(w, dtype=np.float32), Q.Q8_0), Q.Q8_0
    big = float(np.abs(w).max()) if w.size else 0.0
    if not big <= F16_MAX:
        raise MedtuneError(
            f"tensor {t.hf_name} holds values up to {big:.3g}, beyond float16's range; export with dtype f32"
        )
    return np.ascontiguousarray(w, dtype=np.float16), Q.F16


def _nbytes(gguf, t: Tensor, dtype: str) -> tuple[tuple[int, ...], np.dtype, int, GGMLQuantizationType]:
    """(shape, numpy dtype, bytes, GGML type) as _encode will produce them, known before reading the data."""
    Q = gguf.GGMLQuantizationType
    n = int(np.prod(t.shape))
    if t.kind == "f32" or dtype == "f32":
        return t.shape, np.dtype(np.float32), 4 * n, Q.F32
    if dtype == "q8_0" and t.shape[-1] % Q8_BLOCK == 0:
        block, size = gguf.GGML_QUANT_SIZES[Q.Q8_0]
        byte_shape = (*t.shape[:-1], t.shape[-1] // block * size)
        return byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), Q.Q8_0
    return t.shape, np.dtype(np.float16), 2 * n, Q.F16


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_model_dir(model_dir: Path) -> dict:
    if not model_dir.exists():
        raise MedtuneError(f"model folder not found: {model_dir}")
    if not model_dir.is_dir():
        raise MedtuneError(f"{model_dir} is not a folder (expected a merged model folder with {MODEL_CONFIG})")
    if not (model_dir / MODEL_CONFIG).is_file():
        raise MedtuneError(
            f"{model_dir} is not a model folder (no {MODEL_CONFIG}); give a merged model folder "
            "(`medtune merge RUN --out DIR`)"
        )
    return read_json(model_dir / MODEL_CONFIG)


def _write_tensors(gguf, writer, arch, plan, weights, dtype: str) -> dict[str, int]:
    """Tensor infos, header and metadata, then the tensors one at a time (one in memory); counts by GGML type."""
    extra = arch.extra_tensors()
    for t in plan:
        shape, np_dtype, nbytes, qtype = _nbytes(gguf, t, dtype)
        writer.add_tensor_info(t.name, shape, np_dtype, nbytes, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    counts: dict[str, int] = {}
    for t in plan:
        w = extra[t.name] if not t.hf_name else arch.transform(t.hf_name, weights.get(t.hf_name))
        data, qtype = _encode(gguf, t, w, dtype)
        writer.write_tensor_data(data)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        del w, data
    return counts


def export_gguf(model_dir: Path, out_file: Path, dtype: str = "f16") -> Path:
    """Write the model folder `model_dir` (config.json, safetensors, tokenizer; optionally medtune's config.yaml) as
    the GGUF file `out_file` (f16, q8_0 or f32 weights), atomically. Returns `out_file`."""
    model_dir, out_file = Path(model_dir).expanduser(), Path(out_file).expanduser()
    dtype = str(dtype).lower()
    if dtype not in DTYPES:
        raise MedtuneError(f"unknown GGUF dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    if out_file.is_dir():
        raise MedtuneError(f"{out_file} is a folder; give the path of the .gguf file to write")
    config = _check_model_dir(model_dir)
    model_type = config.get("model_type")
    if model_type not in ARCH_CLASSES:
        supported = ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())
        raise MedtuneError(
            f"cannot export architecture {model_type or config.get('architectures')!r} to GGUF; supported: {supported}"
        )
    files = weight_files(model_dir)
    if not files:
        raise MedtuneError(f"{model_dir} has no weights (*.safetensors)")
    gguf = require_gguf()

    weights = Weights(files)
    arch = ARCH_CLASSES[model_type](gguf, config, weights)
    arch.check()
    plan = arch.plan()
    n_vocab = weights.shape(next(t.hf_name for t in plan if t.name == "token_embd.weight"))[0]
    vocab = read_tokenizer(model_dir, n_vocab, gguf)
    medtune_cfg = read_medtune_config(model_dir)
    n_params = sum(int(np.prod(t.shape)) for t in plan if t.hf_name)
    log.info(
        f"gguf: {model_dir} ({arch.name}, {n_params / 1e6:.1f}M parameters, {len(plan)} tensors) -> {out_file} "
        f"({dtype})"
    )

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    writer = gguf.GGUFWriter(str(tmp), arch.name)
    try:
        writer.add_name(model_dir.resolve().name)
        writer.add_file_type(
            {
                "f32": gguf.LlamaFileType.ALL_F32,
                "f16": gguf.LlamaFileType.MOSTLY_F16,
                "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            }[dtype]
        )
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        arch.write_hparams(writer)
        write_vocab(writer, vocab)
        _write_medtune_metadata(writer, medtune_cfg, model_dir.resolve(), arch.name)

        counts = _write_tensors(gguf, writer, arch, plan, weights, dtype)
        writer.flush()
        for f in writer.fout or ():
            os.fsync(f.fileno())
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(out_file.parent)
    size = out_file.stat().st_size
    log.info(
        f"gguf: wrote {out_file} ({size / 2**20:.1f} MiB; tensors: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + ")"
    )
    return out_file
