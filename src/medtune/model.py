"""Model: tokenizer, base model (hub id, local dir, a .gguf file through medtune.gguf_load, or random weights from a
GPT-2 or Llama / Qwen2 config), quantization, LoRA; and a run's model for inference (load_model: base + adapter, or
a merged folder), the one place that loads models (rundir names a run's files, this loads what they hold)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from pathlib import Path

import torch

from medtune import rundir
from medtune.config import GPT2_SHAPES, ModelConfig
from medtune.errors import MedtuneError, first_line
from medtune.gguf_load import gguf_path, load_gguf, require_gguf
from medtune.validate import check_quantization, check_random_name

ASSETS = Path(__file__).parent / "assets"
BUILTIN_TOKENIZERS = {"builtin:tiny": ASSETS / "tiny_tokenizer"}

log = logging.getLogger("medtune.model")


def tokenizer_path(cfg: ModelConfig) -> str:
    name = cfg.tokenizer or cfg.name
    if name in BUILTIN_TOKENIZERS:
        return str(BUILTIN_TOKENIZERS[name])
    if name.startswith("random:"):
        raise MedtuneError(
            "model.tokenizer must be set for random:<model> names (e.g. builtin:tiny or a local tokenizer folder)"
        )
    return name


def _from_hub_or_cache(load, name: str, what: str, **kwargs):
    """Local folders load directly; hub ids try the local cache first, then the hub if it is reachable."""
    if os.path.isdir(name):
        return load(name, **kwargs)
    if name.startswith((".", "/", "~")):
        raise MedtuneError(f"{what} folder not found: {name}")
    try:
        return load(name, local_files_only=True, **kwargs)
    except Exception:
        from medtune.hub import require_hub

        require_hub(name, what)
        return load(name, **kwargs)


def load_tokenizer(path_or_id: str):
    """A tokenizer from a local folder, a hub id, builtin:tiny, or a .gguf file (its embedded vocabulary)."""
    from transformers import AutoTokenizer

    path_or_id = str(BUILTIN_TOKENIZERS.get(path_or_id, path_or_id))
    try:
        gguf = gguf_path(path_or_id)
        if gguf is not None:
            require_gguf()
            try:
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            except Exception as e:
                raise MedtuneError(
                    f"cannot read a tokenizer from GGUF file {gguf} (set model.tokenizer to a "
                    f"tokenizer folder instead): {first_line(e)}"
                ) from None
        else:
            tok = _from_hub_or_cache(AutoTokenizer.from_pretrained, path_or_id, "tokenizer")
    except MedtuneError:
        raise
    except Exception as e:
        raise MedtuneError(
            f"cannot load tokenizer '{path_or_id}' (not a local tokenizer folder, "
            f"and the hub is unreachable or has no such model): {first_line(e)}"
        ) from None
    if tok.eos_token_id is None:
        raise MedtuneError(f"tokenizer '{path_or_id}' has no EOS token; set one in its tokenizer_config.json")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # safe: our collators mask padding by position, not by id
    tok.padding_side = "right"
    return tok


def is_random(cfg: ModelConfig) -> bool:
    return cfg.name.startswith("random:")


def build_random(name: str, tokenizer, seed: int = 0, vocab_size: int | None = None, dtype: torch.dtype | None = None):
    """A model of the named shape (a GPT-2 size or a Llama / Qwen2 shape: validate.LLAMA_SHAPES) with random weights
    and the tokenizer's vocabulary (`vocab_size`: a larger embedding, e.g. the real model's, for benchmarks; the
    tokenizer's ids are its first rows). `dtype`: build in it (bf16 halves an 8B model's host memory); it is created on
    the current default device, so `with torch.device("meta")` builds the config and shapes without weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from medtune.validate import LLAMA_SHAPES

    check_random_name(name)
    shape = name.split(":", 1)[1]
    ids = dict(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if shape in LLAMA_SHAPES:
        kw = dict(LLAMA_SHAPES[shape])
        config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[
            kw.pop("arch")
        ]
        config = config_cls(**ids, **kw)
    else:
        config, model_cls = GPT2Config(**ids, **GPT2_SHAPES[shape]), GPT2LMHeadModel
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):  # same base weights every time, without touching the run's RNG
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype or old)
        try:
            return model_cls(config)
        finally:
            torch.set_default_dtype(old)


def compute_dtype() -> torch.dtype:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if torch.cuda.is_available() else torch.float32


def weights_dtype(cfg: ModelConfig):
    if cfg.dtype == "auto":
        return compute_dtype() if torch.cuda.is_available() else torch.float32
    return getattr(torch, cfg.dtype)


def context_length(model) -> int | None:
    """The longest sequence the model takes (positions), or None when its config does not say."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    for key in ("n_positions", "max_position_embeddings"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


# architectures whose logits are exactly `lm_head(decoder(...).last_hidden_state)`: a bias-free linear head with no
# scaling or soft-capping in between, so the loss can be computed from the decoder's output in chunks
PLAIN_HEAD_MODELS = {
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "phi3",
    "olmo",
    "olmo2",
    "smollm3",
    "gpt_neox",
    "opt",
}


def decoder_and_head(model):
    """(decoder, output embedding weight) of a causal LM, PEFT-wrapped or not, for the chunked loss of training and
    evaluation; None where the logits are more than a plain linear map of the decoder's output."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = getattr(base, "base_model", None)
    config = getattr(base, "config", None)
    if head is None or decoder is None or decoder is base or not isinstance(head, torch.nn.Linear):
        return None
    if head.bias is not None or getattr(config, "model_type", "") not in PLAIN_HEAD_MODELS:
        return None
    if any(
        getattr(config, k, None) not in (None, 1.0)
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")
    ):
        return None
    return decoder, head.weight


def decoder_output(model, decoder, **inputs) -> torch.Tensor:
    """Run the whole (possibly DDP-, accelerate- or PEFT-wrapped) model with the LM head on the last position only
    (logits_to_keep=1), and return the decoder's last hidden states, caught by a forward hook. Running the wrapper
    (not the decoder alone) keeps DDP's gradient sync and autocast."""
    caught = []
    hook = decoder.register_forward_hook(lambda module, args, out: caught.append(out[0]))
    try:
        model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    (hidden,) = caught
    return hidden


def quantization_config(cfg: ModelConfig):
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(),
        )
    if cfg.quantization == "8bit":
        check_quantization(cfg)  # a run trained in 8 bits, loaded again on a machine without CUDA
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def fix_cpu_4bit(model) -> None:
    """bitsandbytes 0.50 on CPU repacks 4-bit weights for inference on the first eval-mode forward, after
    which training fails; turning the avx512-bf16 path off keeps train -> eval -> train working."""
    if torch.cuda.is_available():
        return
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def load_base_model(cfg: ModelConfig, tokenizer, local_path: str | None = None, quantize: bool = True):
    """Load the base causal LM. `local_path` overrides cfg.name (e.g. a random base saved with a run).
    A .gguf file loads dequantized as a plain model (serializable, so a run based on it merges to safetensors);
    with 4bit quantization its dequantized weights are saved to a temporary folder and requantized (NF4) from there."""
    from transformers import AutoModelForCausalLM

    name = local_path or cfg.name
    qcfg = quantization_config(cfg) if quantize else None
    gguf = gguf_path(name)
    if gguf is not None:
        model = load_gguf(gguf, weights_dtype(cfg), cfg.attn_implementation)
        if qcfg is None:
            return model
        with tempfile.TemporaryDirectory() as d:  # bitsandbytes quantizes while loading: round-trip via disk
            model.save_pretrained(d)
            del model
            model = load_base_model(cfg, tokenizer, local_path=d)
        model.config.name_or_path = model.name_or_path = str(gguf)  # the adapter's base: not the deleted folder
        return model
    if is_random(cfg) and local_path is None:
        model = build_random(name, tokenizer)
        if qcfg is None:
            return model.to(weights_dtype(cfg))
        with tempfile.TemporaryDirectory() as d:  # bitsandbytes quantizes while loading: round-trip via disk
            model.save_pretrained(d)
            return load_base_model(cfg, tokenizer, local_path=d)
    kwargs = dict(dtype=weights_dtype(cfg), attn_implementation=cfg.attn_implementation)
    if qcfg is not None:
        kwargs.update(
            quantization_config=qcfg,
            device_map={"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"},
        )
        kwargs["dtype"] = compute_dtype()
    try:
        model = _from_hub_or_cache(AutoModelForCausalLM.from_pretrained, name, "model", **kwargs)
    except MedtuneError:
        raise
    except (OSError, ValueError, KeyError) as e:
        where = "local folder" if os.path.isdir(name) else "hub id (the hub may be unreachable)"
        raise MedtuneError(f"cannot load model '{name}' as a {where}: {first_line(e)}") from None
    if qcfg is not None and cfg.quantization == "4bit":
        fix_cpu_4bit(model)
    return model


def lora_targets(model, cfg: ModelConfig) -> list[str] | str:
    """model.lora_targets, else peft's "all-linear": every Linear and GPT-2-style Conv1D layer but the output head
    (tests/test_model_archs.py checks per architecture that this is every linear layer of the decoder blocks)."""
    if cfg.lora_targets:
        return list(cfg.lora_targets)
    return "all-linear"


def _has_conv1d(model) -> bool:
    """GPT-2-style Conv1D layers (weights stored transposed): LoRA on them needs fan_in_fan_out=True."""
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) for m in model.modules())


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, non-reentrant, on a model or the base inside a PEFT model: the one place
    that turns it on, for model.gradient_checkpointing (add_lora) and for the memory plan of train.max_memory_gib
    (training.train.apply_speedups); the Trainer's own switch stays off (training.trainer.training_arguments).
    Through activation_checkpointing_enable where transformers has it (it deprecates the old name,
    gradient_checkpointing_enable, with a FutureWarning), else the old name."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(base, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, cfg: ModelConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantization != "none" and compute_dtype() == torch.bfloat16:
        # QLoRA with bf16 compute: keep the non-quantized weights (embeddings, layer norms) in bf16 rather than
        # prepare_model_for_kbit_training's float32 copies, so the residual stream and its saved activations stay bf16
        for p in model.parameters():
            p.requires_grad_(False)
    elif cfg.quantization != "none":  # its checkpointing (non-reentrant) is enable_checkpointing's below
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
        if cfg.quantization == "none":
            model.enable_input_require_grads()
    targets = lora_targets(model, cfg)
    is_conv1d = getattr(model.config, "model_type", "") == "gpt2" or _has_conv1d(model)
    lcfg = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # peft says int; floats work
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        fan_in_fan_out=is_conv1d,
        use_rslora=cfg.lora_rslora,
        use_dora=cfg.lora_dora,
    )
    try:
        model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise MedtuneError(f"LoRA targets {targets} do not fit this model: {first_line(e)}") from None
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        f"model: {trainable:,} trainable / {total:,} total parameters ({100 * trainable / total:.2f}%), "
        f"LoRA r={cfg.lora_r}{' rsLoRA' * cfg.lora_rslora}{' DoRA' * cfg.lora_dora} on {targets}, "
        f"quantization={cfg.quantization}"
    )
    return model


# ---------------------------------------------------------------- a run's model, for inference


def load_model(
    run: rundir.RunFolder, device: str | None = None, adapter: bool = True, merge: bool = False, float32: bool = False
):
    """The run's model for inference: base + adapter (a PeftModel; merged into the weights with merge=True, see
    add_adapter), the base alone (adapter=False: no LoRA layers at all), or the merged model. Returns (model,
    tokenizer). float32 (a run): the base unquantized, in float32, whatever the run trained on (what `medtune merge`
    folds the adapter into)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(str(run.path))
    cfg = run.config
    with _load_errors(run):
        if run.is_run:
            base_dir = run.base_model
            model_cfg = dataclasses.replace(cfg.model, dtype="float32") if float32 else cfg.model
            local = str(base_dir) if base_dir else None
            model = load_base_model(model_cfg, tok, local_path=local, quantize=not float32)
            if float32:
                model = model.float()
            if float32 or cfg.model.quantization == "none":
                model.to(device)
            if adapter:
                model = add_adapter(run, model, merge=merge)
        else:
            from transformers import AutoModelForCausalLM

            merged: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
                str(run.path), dtype=weights_dtype(cfg.model)
            )
            model = merged.to(device)  # (typed as a Module: PreTrainedModel.to's @wraps misleads type checkers)
    model.eval()
    return model, tok


def add_adapter(run: rundir.RunFolder, base, merge: bool):
    """The run's adapter on a loaded base model; merged into its weights when merge is set and the base is not
    quantized (one matmul per layer instead of three, same function), else a PeftModel."""
    from peft import PeftModel

    with _load_errors(run):
        model = PeftModel.from_pretrained(base, str(run.path))
    if merge and run.config.model.quantization == "none":
        model = model.merge_and_unload()
    return model.eval()


@contextlib.contextmanager
def _load_errors(run: rundir.RunFolder):
    from safetensors import SafetensorError

    try:
        yield
    except MedtuneError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise MedtuneError(
            f"cannot load the model in {run.path} (a corrupt or incomplete file?): {first_line(e)}"
        ) from None
