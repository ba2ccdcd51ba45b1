"""GGUF export: constants, reading the model folder (see medtune.gguf_export)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medtune.errors import MedtuneError, first_line

DTYPES = ("f16", "q8_0", "f32")
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}  # config.json model_type -> class
F16_MAX = 65504.0
Q8_BLOCK = 32

# Byte-level BPE pre-tokenizers, named as llama.cpp knows them (tokenizer.ggml.pre). llama.cpp picks the split
# regex from this name, so a wrong name silently tokenizes differently: an unrecognized one is refused.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_NAMES = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}

# medtune's own metadata keys (GGUF keys outside llama.cpp's namespaces are kept and ignored by the runtimes)
KEY_PROMPT_FORMAT = "medtune.prompt_format"
KEY_PROMPT_TEMPLATE = "medtune.prompt_template"
KEY_PROMPT_TEMPLATE_NO_INPUT = "medtune.prompt_template_no_input"
KEY_CHAT_PROMPT = "medtune.chat_prompt"
KEY_SYSTEM_PROMPT = "medtune.system_prompt"
KEY_DEFAULT_INSTRUCTION = "medtune.default_instruction"
KEY_VERSION = "medtune.version"


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise MedtuneError(
            "GGUF export needs the `gguf` package: pip install gguf (or pip install 'medtune[gguf]')"
        ) from None
    return gguf


# ----------------------------------------------------------------------------------------------- reading the folder


def read_json(path: Path) -> dict:
    """A JSON file of the model folder that must be there (rundir.read_json's one-line errors)."""
    from medtune import rundir

    return rundir.read_json(path, required=True)


def weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():  # a sharded checkpoint: exactly the shards its index names
            names = sorted(set(read_json(index).get("weight_map", {}).values()))
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise MedtuneError(f"{model_dir}: shard {missing[0]} named in model.safetensors.index.json is missing")
            files = [model_dir / n for n in names]
        return files
    return sorted(model_dir.glob("pytorch_model*.bin"))


class Weights:
    """The checkpoint's tensors by name, read one at a time (safetensors: lazily, from the memory-mapped file)."""

    def __init__(self, files: list[Path]):
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._bin: dict = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                try:
                    with safe_open(str(f), framework="pt") as st:
                        for name in st.keys():
                            self._where[name] = f
                            self._shapes[name] = tuple(st.get_slice(name).get_shape())
                except Exception as e:
                    raise MedtuneError(f"cannot read weights {f}: {first_line(e)}") from None
            else:
                import torch

                try:
                    state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
                except Exception as e:
                    raise MedtuneError(f"cannot read weights {f}: {first_line(e)}") from None
                for name, t in state.items():
                    self._bin[name] = t
                    self._shapes[name] = tuple(t.shape)

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> np.ndarray:
        """float32 numpy (bf16/f16 checkpoints are widened first: numpy has no bfloat16)."""
        if name in self._bin:
            t = self._bin[name]
        else:
            from safetensors import safe_open

            with safe_open(str(self._where[name]), framework="pt") as st:
                t = st.get_tensor(name)
        return t.float().numpy()


def read_medtune_config(model_dir: Path) -> dict:
    """The folder's medtune config.yaml as a dict (the run-folder reader), or {} for a folder without one."""
    import dataclasses

    from medtune.rundir import CONFIG, read_run_config

    path = model_dir / CONFIG
    return dataclasses.asdict(read_run_config(path)) if path.is_file() else {}


def natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
