"""A .gguf checkpoint as a plain transformers model: dequantized, trainable and serializable (transformers' own GGUF
loading marks the model quantized and refuses save_pretrained). medtune.model loads base models through it; the
other way round, a merged model to a .gguf file, is medtune.gguf_export."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from medtune.errors import MedtuneError, first_line


def gguf_path(name: str | None) -> Path | None:
    """The .gguf file that `name` points to, or None when `name` is not a GGUF path."""
    if not name or not str(name).lower().endswith(".gguf"):
        return None
    path = Path(name).expanduser()
    if not path.is_file():
        raise MedtuneError(f"GGUF file not found: {name}")
    return path


def require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MedtuneError(
            "loading a .gguf file needs the `gguf` package: pip install gguf (or pip install 'medtune[gguf]')"
        ) from None


def _context_config(path: Path) -> dict:
    """transformers' GGUF reader assumes GPT-2's 1024 positions; a GPT-2 file of another context length loads with a
    config that says so. {} for other architectures."""
    import gguf
    from transformers import AutoConfig

    reader = gguf.GGUFReader(str(path))
    f = reader.fields.get("gpt2.context_length")
    if f is None:
        return {}
    n = int(f.parts[f.data[0]][0])
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if getattr(config, "n_positions", n) == n:
        return {}
    config.n_positions = n
    return {"config": config}


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """A GGUF checkpoint as a plain, trainable, serializable transformers model.

    transformers dequantizes the file's weights (to float32), but the model it returns is marked as quantized with
    gguf and refuses save_pretrained. So: rebuild the architecture from the config read out of
    the file, and load the dequantized weights into it."""
    from transformers import AutoModelForCausalLM

    require_gguf()
    path = Path(path).expanduser()
    kwargs = {}
    try:  # transformers >= 5.2x can keep GGUF blocks packed (kernels package); we need plain, trainable weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        kwargs.update(_context_config(path))
        loaded = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, **kwargs
        )
    except Exception as e:
        raise MedtuneError(f"cannot load GGUF file {path}: {first_line(e)}") from None
    config = copy.deepcopy(loaded.config)
    if "quantization_config" in config.__dict__:
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten below; leave the run's RNG alone
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    try:
        model.load_state_dict(loaded.state_dict(), strict=True)
    except RuntimeError as e:
        raise MedtuneError(
            f"GGUF file {path}: its weights do not fit the architecture read from it: {first_line(e)}"
        ) from None
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.config.name_or_path = model.name_or_path = str(path)
    del loaded
    return model.eval()
