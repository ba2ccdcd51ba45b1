"""Training throughput and memory of medtune's recipes against reference recipes, on the wikidoc data with the real
GPT-2 tokenizer and GPT-2 architectures with random weights (speed and memory do not depend on the weights' values).

GPU (CUDA; needs bitsandbytes, trl and datasets), the table of docs/performance.md (about 11 minutes on an H100):
  python benchmarks/throughput.py --sizes gpt2 gpt2-xl gpt2-medium gpt2-large --warmup 4 --steps 12 --trl-steps 5 \
    --variant lora: --variant qlora: --variant gpt2/qlora+b32k:train.batch_tokens=32768 --variant gpt2-xl/lean: \
    --variant gpt2/lora+c32k:train.batch_tokens=32768,train.compile=true [--profile 2 --profile-variants qlora]
  Llama / Qwen2 shapes (random:<name>, e.g. llama-1b llama-8b qwen2.5-7b; LoRA on q/k/v/o/gate/up/down_proj), budgets:
  python benchmarks/throughput.py --sizes llama-1b llama-8b --warmup 3 --steps 8 --trl-steps 5 --variant lora: \
    --variant lora+m24:train.max_memory_gib=24 --variant qlora: --variant qlora+m8:train.max_memory_gib=8
    their bases have the real models' vocabulary sizes (128,256 / 151,936 / 152,064 rows: the embedding, head and loss
    cost what they cost on the real model; the GPT-2 tokenizer's ids are the first rows), --tokenizer-vocab: the
    tokenizer's own; TRL's recommended row (anchor_baselines.py) is GPT-2-only, so these sizes get trl_tuned.py's
    rows alone, trained on the same saved base.
  in general: [--sizes ...] [--recipes lora qlora lean] [--variant [SIZE/]NAME:key=value,...] [--epoch] [--no-trl]
    (ablations turn speed-ups off with the config key train.disable, e.g. --variant gpt2/lora+nogelu:train.disable=gelu
    or lora+plain:train.disable=gelu,norms,chunked_loss)
    medtune recipes (configs/gpt2-lora.yaml = bf16 LoRA, configs/gpt2-qlora.yaml = 4-bit QLoRA; `lean` = QLoRA
    with train.max_memory_gib=4) on random:<size>: non-padding tokens/s after warm-up, peak
    torch.cuda.max_memory_allocated over the whole run, and the time of one wikidoc epoch (measured with --epoch,
    else tokens per epoch / tokens/s). In the same run on the same card, the TRL reference recipe from
    anchor_baselines.py (subprocess), TRL set up for speed (benchmarks/trl_tuned.py, --trl-tuned qlora lora: rows of
    their own), and the ratio medtune / the faster TRL row at equal or lower peak memory. Prints a markdown table.
CPU:
  python benchmarks/throughput.py --cpu
    a small GPT-2 (4 layers x 256, real tokenizer): the tutorial recipe (4-bit fp4, batch 4 padded to 512) and
    medtune's recipes (packed, token-budget batches, chunked loss) in one process, a few minutes on 2 cores; ends
    with the line `ratio medtune/tutorial: X.XX` (medtune QLoRA over the tutorial, non-padding tokens/s).
  python benchmarks/throughput.py --smoke --data FILE.json --tokenizer DIR
    the CPU mode at toy sizes (1 layer x 64, 64 records, 1 warm-up + 1 timed step, 512-token batches): seconds;
    checks that every row runs (tests/test_benchmarks.py), its numbers mean nothing.
  python benchmarks/throughput.py --smoke --sizes llama-tiny --data FILE.json --tokenizer DIR
    the GPU table's path on the CPU at toy sizes (medtune's LoRA and QLoRA rows and TRL tuned for speed, LoRA, on
    random:<size>): checks that a size's rows run.

Data and tokenizer default to .gpu/data/ or ../shared/data/ (and anchor_baselines.py to .gpu/bench/ or
../shared/bench/).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from medtune.training.memory import DoesNotFit  # noqa: E402

WIKIDOC = "wikidoc_patient_information/wikidoc_patient_information.json"
RECIPES = {  # name -> (config file, overrides)
    "lora": ("configs/gpt2-lora.yaml", []),
    "qlora": ("configs/gpt2-qlora.yaml", []),
    "lean": ("configs/gpt2-qlora.yaml", ["train.max_memory_gib=4"]),
}
GIB = 2**30


def _first(*paths) -> Path | None:
    for p in paths:
        if p and Path(p).exists():
            return Path(p)
    return None


def default_paths(args):
    data_dirs = [ROOT / ".gpu" / "data", ROOT.parent / "shared" / "data"]
    args.data = args.data or str(_first(*(d / WIKIDOC for d in data_dirs)) or "")
    args.tokenizer = args.tokenizer or str(_first(*(d / "gpt2_tokenizer" for d in data_dirs)) or "")
    args.anchor = args.anchor or str(
        _first(
            ROOT / ".gpu" / "bench" / "anchor_baselines.py", ROOT.parent / "shared" / "bench" / "anchor_baselines.py"
        )
        or ""
    )
    if not args.data or not args.tokenizer:
        sys.exit("wikidoc data or GPT-2 tokenizer not found; pass --data and --tokenizer")


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------- measuring a Trainer run


def clock_callback(warmup: int, profile_steps: int = 0, profile_out: Path | None = None):
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        t_start = t0 = t1 = None
        steps = 0
        prof = None

        def _sync(self):
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kw):
            self._sync()
            self.t_start = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            # profile the last `profile_steps` warm-up steps, so the timed steps run without the profiler
            if profile_steps and state.global_step == warmup - profile_steps and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            control.should_evaluate = control.should_save = False  # measure training only
            if self.prof and state.global_step == warmup:
                self._sync()
                self.prof.__exit__(None, None, None)
                key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
                table = self.prof.key_averages().table(sort_by=key, row_limit=45, max_name_column_width=70)
                if profile_out:
                    profile_out.write_text(f"{profile_steps} steps\n" + table)
                log(table[:3000])
                self.prof = False
            if state.global_step == warmup:
                self._sync()
                self.t0 = time.perf_counter()
            self.steps = state.global_step

        def on_train_end(self, args, state, control, **kw):
            self._sync()
            self.t1 = time.perf_counter()

    return Clock()


def _summary(clock, batch_tokens: list[int], warmup: int, epoch_tokens: int, full_epoch: bool) -> dict:
    """Tokens per second over the timed steps; batch_tokens: the trainer's count of each training batch's real tokens
    (one batch per step: the benchmark runs without gradient accumulation); evaluation batches never enter it."""
    timed_steps = clock.steps - warmup
    if clock.t0 is None or timed_steps < 1:
        raise RuntimeError(f"too few steps ({clock.steps}) for {warmup} warm-up steps")
    dt = clock.t1 - clock.t0
    tok = sum(batch_tokens[warmup : clock.steps])
    r = dict(
        steps=timed_steps,
        s_per_step=round(dt / timed_steps, 4),
        tok_s=round(tok / dt),
        tokens_per_step=round(tok / timed_steps),
    )
    total = clock.t1 - clock.t_start
    if full_epoch:
        r.update(epoch_s=round(total, 1), epoch_measured=True)
    else:
        r.update(epoch_s=round(epoch_tokens / max(r["tok_s"], 1e-9), 1), epoch_measured=False)
    return r


def _free():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ---------------------------------------------------------------- medtune's recipe

_CHECKED: dict = {}
_PREPARED: dict = {}
_BASES: dict = {}


def _random_base(name: str, tok, tokenizer_vocab: bool = False) -> str:
    """random:<size> as medtune builds it (medtune.model.build_random), saved once to a temporary folder. Llama / Qwen2
    shapes: with the real model's vocabulary size unless `tokenizer_vocab`, built in bf16 on the GPU (an 8B model in
    float32 on the host takes 32 GB and minutes to initialise)."""
    from medtune.model import build_random
    from medtune.validate import LLAMA_SHAPES, REAL_VOCAB

    if name not in _BASES:
        shape = name.split(":")[1]
        d = tempfile.mkdtemp(prefix=f"mt-{shape}-")
        if shape in LLAMA_SHAPES:
            vocab = None if tokenizer_vocab else REAL_VOCAB.get(shape)
            cuda = torch.cuda.is_available()
            with torch.device("cuda" if cuda else "cpu"):
                model = build_random(name, tok, vocab_size=vocab, dtype=torch.bfloat16 if cuda else None)
            n = sum(p.numel() for p in model.parameters())
            log(f"random base {shape}: {n:,} parameters, {model.config.vocab_size:,} tokens")
        else:
            model = build_random(name, tok)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        del model
        _BASES[name] = d
    return _BASES[name]


def run_medtune(
    args, name: str, overrides: list[str], warmup: int, steps: int | None, full_epoch: bool, profile: int = 0
) -> dict:
    """Train medtune's recipe through medtune.training.make_trainer (what `medtune train` runs) for `steps` steps after
    `warmup` (or a whole epoch) and measure it."""
    from medtune import data as data_mod
    from medtune import model as model_mod
    from medtune import training
    from medtune.validate import load_config

    _free()
    # memory still held when the row starts (left over from earlier rows in this process): counted in its peak
    resident = torch.cuda.memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    out = Path(tempfile.mkdtemp(prefix="mt-bench-"))
    big = str(10**9)
    sets = [
        f"model.tokenizer={args.tokenizer}",
        f"data.source={args.data}",
        "train.report_to=none",
        f"train.save_steps={big}",
        f"train.eval_steps={big}",
        f"train.logging_steps={big}",
        "train.epochs=1",
        f"train.max_steps={-1 if full_epoch else warmup + steps}",
    ] + overrides
    cfg_file = next((o.split("=", 1)[1] for o in overrides if o.startswith("config=")), None)
    sets = [o for o in sets if not o.startswith("config=")]
    cfg = load_config(ROOT / cfg_file if cfg_file else None, sets, output_dir=str(out))
    tok = model_mod.load_tokenizer(model_mod.tokenizer_path(cfg.model))
    key = (args.tokenizer, cfg.data.max_length, cfg.data.max_records)
    if key not in _CHECKED:
        _CHECKED[key] = data_mod.load_checked(cfg.data)
    training.train.record_data_choices(cfg, tok, _CHECKED[key])  # as `medtune train` does (chat format: EOS)
    if key not in _PREPARED:
        _PREPARED[key] = data_mod.prepare(cfg.data, tok, _CHECKED[key])
    prepared = _PREPARED[key]
    epoch_tokens = sum(len(e["input_ids"]) for e in prepared.encoded["train"])
    if cfg.model.name.startswith("random:"):  # build and save each random base once (gpt2-xl takes a while)
        cfg.model.name = _random_base(cfg.model.name, tok, getattr(args, "tokenizer_vocab", False))
    model = model_mod.load_base_model(cfg.model, tok)
    model.config.use_cache = False
    model = model_mod.add_lora(model, cfg.model)
    _free()
    trainer, collator, info = training.make_trainer(cfg, model, tok, prepared, out)
    trainer.args.disable_tqdm = True
    prof_file = Path(os.environ["OUT"]) / f"profile-{name}.txt" if profile and os.environ.get("OUT") else None
    clock = clock_callback(warmup, profile, prof_file)
    trainer.add_callback(clock)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    r = dict(name=name, **_summary(clock, trainer.batch_tokens, warmup, epoch_tokens, full_epoch))
    r["train_loss"] = round(trainer.state.log_history[-1].get("train_loss", float("nan")), 4)
    if torch.cuda.is_available():
        r["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        r["resident_at_start_gib"] = round(resident, 2)
    r.update(
        attention=info.attention,
        loss_kind=info.loss,
        batch_tokens=info.batch_tokens,
        gradient_checkpointing=info.gradient_checkpointing,
    )
    if info.plan is not None:
        r["plan"] = dataclasses.asdict(info.plan)
    del trainer, model, collator
    _free()
    return r


# ---------------------------------------------------------------- reference recipes


def run_trl_tuned(args, recipe: str, size: str, base: str | None = None) -> dict:
    """trl_tuned.py (TRL set up for speed) in a subprocess, on `base` (the saved model medtune's rows train) when given:
    without gradient checkpointing, and again with it when that runs out of memory."""
    extra = (["--base", base] if base else []) + ([] if torch.cuda.is_available() else ["--cpu", "--warmup", "1"])
    extra += ["--records", str(args.max_records)] if args.max_records else []
    extra += ["--tokens", str(args.cpu_batch_tokens)] if not torch.cuda.is_available() else []
    for ckpt in ([], ["--checkpointing"]):
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("trl_tuned.py")),
            recipe,
            size,
            "--steps",
            str(args.trl_steps),
            "--tokenizer",
            args.tokenizer,
            "--data",
            args.data,
            *extra,
            *ckpt,
        ]
        p = subprocess.run(
            cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=args.anchor_timeout
        )
        for line in p.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
        if "out of memory" not in (p.stderr + p.stdout).lower():
            break
    raise RuntimeError(f"trl_tuned {recipe} {size} failed (rc {p.returncode}): {(p.stderr or p.stdout)[-1500:]}")


def anchor_script(args) -> str:
    """anchor_baselines.py where it finds this run's data: it reads ../data/gpt2_tokenizer and
    ../data/wikidoc_patient_information/ beside its own folder, so when --data or --tokenizer point elsewhere a
    copy is laid out with links to them in a temporary folder."""
    here = Path(args.anchor).resolve().parent.parent / "data"
    want = {"gpt2_tokenizer": Path(args.tokenizer), WIKIDOC: Path(args.data)}
    if all((here / name).resolve() == path.resolve() for name, path in want.items()):
        return args.anchor
    root = Path(tempfile.mkdtemp(prefix="medtune-anchor-"))
    (root / "bench").mkdir()
    (root / "bench" / "anchor_baselines.py").write_bytes(Path(args.anchor).read_bytes())
    for name, path in want.items():
        (root / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / name).symlink_to(path.resolve())
    return str(root / "bench" / "anchor_baselines.py")


def run_anchor(args, mode: str, size: str, steps: int) -> dict:
    """anchor_baselines.py in a subprocess (its own process: its memory peak is its own)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, anchor_script(args), mode, size, str(steps)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.anchor_timeout)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} {size} failed (rc {p.returncode}): {(p.stderr or p.stdout)[-1500:]}")


def tutorial_cpu(
    model_dir: str, tok_dir: str, data: str, warmup: int, steps: int, max_records: int | None = None
) -> dict:
    """The tutorial recipe of anchor_baselines.py, device-agnostic: 4-bit defaults (fp4, fp32 compute),
    prepare_model_for_kbit_training (gradient checkpointing), LoRA r16 on c_attn, batch 4 padded to 512."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.pad_token = tok.eos_token
    rows = json.load(open(data))[:max_records]
    text = [
        f"### Instruction:\n{r['instruction']}\n\n### Input:\n{r['input']}\n\n### Response:\n{r['output']}"
        for r in rows
    ]
    ds = Dataset.from_dict({"text": text}).map(
        lambda b: tok(b["text"], truncation=True, max_length=512, padding="max_length"),
        batched=True,
        remove_columns=["text"],
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map={"": "cpu"}
    )
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(
        model,
        LoraConfig(
            r=16, lora_alpha=32, target_modules=["c_attn"], lora_dropout=0.05, bias="none", task_type="CAUSAL_LM"
        ),
    )
    d = tempfile.mkdtemp()
    targs = TrainingArguments(
        output_dir=d,
        per_device_train_batch_size=4,
        max_steps=warmup + steps,
        logging_steps=10**9,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )

    class Counting:
        def __init__(self, inner):
            self.inner, self.per_batch = inner, []

        def __call__(self, feats):
            b = self.inner(feats)
            self.per_batch.append(int(b["attention_mask"].sum()))
            return b

    counter = Counting(DataCollatorForLanguageModeling(tok, mlm=False))
    clock = clock_callback(warmup)
    trainer = Trainer(model=model, args=targs, train_dataset=ds, data_collator=counter, callbacks=[clock])
    trainer.train()
    epoch_tokens = sum(min(len(tok(t)["input_ids"]), 512) for t in text[:200]) * len(text) / 200
    return dict(name="tutorial", **_summary(clock, counter.per_batch, warmup, int(epoch_tokens), False))


# ---------------------------------------------------------------- output


def fmt_time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown(rows: list[dict], card: str) -> str:
    lines = [
        f"card: {card}",
        "",
        "| model | recipe | tokens/s | peak GiB | epoch | TRL tokens/s | TRL peak GiB | ratio vs TRL | settings |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if r.get("tok_s") is None:
            lines.append(f"| {r['size']} | {r['recipe']} | {r.get('note', '-')} | | | | | | |")
            continue
        trl = faster_trl(r)
        ratio = f"{r['tok_s'] / trl['tok_s']:.1f}x" if trl.get("tok_s") else "-"
        ckpt = r.get("gradient_checkpointing", r.get("checkpointing"))
        settings = (
            f"{r.get('batch_tokens') or '-'} tok/batch, {r.get('attention') or 'padding-free bfd'}, "
            f"ckpt {'on' if ckpt else 'off'}"
        )
        if r.get("plan"):  # the planner's choice and what it expected, to calibrate its memory model against
            plan = r["plan"]
            settings += f", {plan['checkpoint_layers']} layers ckpt, planned {plan['planned_peak_gib']} GiB"
        if (r.get("resident_at_start_gib") or 0) >= 0.05:
            settings += f", {r['resident_at_start_gib']} GiB held from earlier rows"
        epoch = fmt_time(r["epoch_s"]) + ("" if r.get("epoch_measured") else " (est.)") if "epoch_s" in r else "-"
        trl_cell = f"{trl['tok_s']:,} ({trl['which']})" if trl.get("tok_s") else "-"
        lines.append(
            f"| {r['size']} | {r['recipe']} | {r['tok_s']:,} | {r.get('peak_gib', '-')} | {epoch} | "
            f"{trl_cell} | "
            f"{trl.get('peak_gib', '-')} | {ratio} | {settings} |"
        )
    return "\n".join(lines)


def faster_trl(row: dict) -> dict:
    """The faster of the TRL rows (recommended, tuned for speed) whose peak is at most this row's peak; when none
    is that small, the one with the smallest peak. Labelled with which it is."""
    peak = row.get("peak_gib")
    candidates = [dict(t, which=w) for w, t in (("recommended", row.get("trl")), ("tuned", row.get("trl_tuned"))) if t]
    fits = [t for t in candidates if peak is None or t.get("peak_gib") is None or t["peak_gib"] <= peak]
    if not fits:
        return min(candidates, key=lambda t: t["peak_gib"], default={})
    return max(fits, key=lambda t: t.get("tok_s") or 0)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME:key=value,key=value; a piece without `=` continues the list value before it
    (lora+plain:train.disable=gelu,norms,train.compile=true -> train.disable=gelu,norms and train.compile=true)"""
    name, _, rest = text.partition(":")
    sets: list[str] = []
    for piece in (p for p in rest.split(",") if p):
        if "=" not in piece and sets:
            sets[-1] += "," + piece
        else:
            sets.append(piece)
    return name, sets


# ---------------------------------------------------------------- modes


ANCHOR_SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # anchor_baselines.py's SIZES: GPT-2 only


def gpu_main(args):
    """The GPU table; on a machine without CUDA (`--smoke --sizes ...`) the same rows at toy sizes, TRL's 4-bit and
    recommended rows left out (bitsandbytes' CUDA kernels, anchor_baselines.py's CUDA calls)."""
    from medtune.validate import LLAMA_SHAPES

    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    log(f"card: {card}; torch {torch.__version__}")
    rows, refs = [], {}
    prefix = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / "throughput"
    variants = [parse_variant(v) for v in args.variant] or [(r, []) for r in args.recipes]
    for size in args.sizes:
        base = None
        if size in LLAMA_SHAPES:  # one saved base for medtune's rows and TRL's
            from medtune.model import load_tokenizer

            base = _random_base(f"random:{size}", load_tokenizer(args.tokenizer), args.tokenizer_vocab)
        if args.trl and size not in ANCHOR_SIZES:
            log(f"TRL {size}: no recommended row (anchor_baselines.py builds GPT-2 sizes only); trl_tuned.py's alone")
        elif args.trl and cuda:
            try:
                refs[size] = run_anchor(args, "trl", size, args.trl_steps)
                log(f"TRL {size}: {refs[size]}")
            except Exception as e:  # keep going: the medtune rows are still worth having
                log(f"TRL {size} failed: {e}")
        tuned = {}
        for recipe in args.trl_tuned if args.trl else []:
            if recipe == "qlora" and not cuda:
                continue
            try:
                tuned[recipe] = run_trl_tuned(args, recipe, size, base)
                log(f"TRL tuned {size} {recipe}: {tuned[recipe]}")
                rows.append({**tuned[recipe], "size": size, "recipe": f"TRL tuned ({recipe})"})
            except Exception as e:
                log(f"TRL tuned {size} {recipe} failed: {e}")
        for name, extra in variants:
            if "/" in name:  # SIZE/NAME: this size only
                only, name = name.split("/", 1)
                if only != size:
                    continue
            recipe = name.split("+")[0]
            config, base = RECIPES.get(recipe, RECIPES["qlora"])
            sets = [f"config={config}", f"model.name=random:{size}"] + base + extra
            try:
                r = run_medtune(
                    args,
                    f"{size}-{name}",
                    sets,
                    args.warmup,
                    args.steps,
                    args.epoch,
                    profile=min(args.profile, args.warmup - 1) if name in args.profile_variants else 0,
                )
            except DoesNotFit as e:  # a cell of the budget table all the same
                log(f"{size} {name}: {e}")
                r = dict(name=f"{size}-{name}", tok_s=None, note="does not fit")
            except Exception as e:
                import traceback

                traceback.print_exc()
                log(f"{size} {name} failed: {type(e).__name__}: {e}")
                continue
            r.update(size=size, recipe=name, trl=refs.get(size), trl_tuned=tuned.get(recipe.split("+")[0]))
            log(f"medtune {size} {name}: " + json.dumps({k: v for k, v in r.items() if k != "trl"}))
            rows.append(r)
            prefix.with_suffix(".json").write_text(json.dumps(dict(card=card, rows=rows), indent=1))
    table = markdown(rows, card)
    prefix.with_suffix(".md").write_text(table + "\n")
    log("\n" + table)


def cpu_main(args):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from medtune.model import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    model_dir = tempfile.mkdtemp(prefix="mt-cpu-model-")
    torch.manual_seed(0)
    layers, width = (int(x) for x in args.cpu_model.split("x"))
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_layer=layers,
            n_head=4,
            n_embd=width,
            n_positions=1024,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    log(
        f"CPU mode: GPT-2 {layers} layers x {width} (random weights), tokenizer {Path(args.tokenizer).name}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}" + (" (smoke: toy sizes)" if args.smoke else "")
    )
    w, n = args.warmup, args.steps
    common = [
        f"model.name={model_dir}",
        "model.lora_dropout=0.05",
        "train.packing=true",
        f"train.batch_tokens={args.cpu_batch_tokens}",
        "train.learning_rate=0.0002",
        "train.warmup_ratio=0.03",
    ]
    common += [f"data.max_records={args.max_records}"] if args.max_records else []
    results = {}
    t = time.perf_counter()
    results["tutorial"] = tutorial_cpu(model_dir, args.tokenizer, args.data, w, n, args.max_records)
    log(f"tutorial: {results['tutorial']}  ({time.perf_counter() - t:.0f}s)")
    for name, extra in (("medtune-qlora", ["model.quantization=4bit"]), ("medtune-lora", ["model.quantization=none"])):
        t = time.perf_counter()
        results[name] = run_medtune(args, name, common + extra, w, n, False)
        log(f"{name}: {json.dumps(results[name])}  ({time.perf_counter() - t:.0f}s)")
    base = results["tutorial"]["tok_s"]
    log("\n| recipe | tokens/s (non-padding) | tokens/step | s/step | ratio |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        log(f"| {name} | {r['tok_s']:,} | {r['tokens_per_step']:,} | {r['s_per_step']} | {r['tok_s'] / base:.2f} |")
    log(f"ratio medtune/tutorial: {results['medtune-qlora']['tok_s'] / base:.2f}")


SMOKE_SETS = "data.max_length=256,train.batch_tokens=512"


def _smoke_records(data: str, n: int) -> str:
    """The first n records of a .json list, in a file of their own (TRL's rows read the whole file)."""
    path = Path(tempfile.mkdtemp(prefix="mt-smoke-data-")) / "records.json"
    path.write_text(json.dumps(json.loads(Path(data).read_text())[:n]))
    return str(path)


def scratch_root() -> str:
    """Every temporary folder of this run (random bases, run folders, TRL's outputs in its subprocesses through
    TMPDIR) under one folder, removed at exit and on SIGTERM (`timeout`) or SIGHUP: a gpt2-xl row leaves GiBs
    behind, and a lent machine's disk filled after two budget parts. (torch's own compile cache, made when torch is
    imported, stays where TMPDIR pointed before: it is meant to outlive a run.)"""
    root = tempfile.mkdtemp(prefix="mt-throughput-")
    tempfile.tempdir = os.environ["TMPDIR"] = root
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # exit through atexit
        signal.signal(sig, lambda n, _: sys.exit(128 + n))
    return root


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="CPU mode: small config, tutorial vs medtune, a few minutes")
    ap.add_argument("--smoke", action="store_true", help="the CPU mode at toy sizes, in seconds (a test that it runs)")
    ap.add_argument("--cpu-model", default="4x256", help="CPU mode: GPT-2 LAYERSxWIDTH (random weights)")
    ap.add_argument("--max-records", type=int, help="CPU mode: only the first N records of the data")
    ap.add_argument("--sizes", nargs="+", help="GPU: random:<size> names (default gpt2 gpt2-medium gpt2-large gpt2-xl)")
    ap.add_argument(
        "--tokenizer-vocab",
        action="store_true",
        help="Llama / Qwen2 sizes: the tokenizer's vocabulary size instead of the real model's",
    )
    ap.add_argument("--recipes", nargs="+", default=["lora", "qlora"], choices=sorted(RECIPES))
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="[SIZE/]NAME:section.key=value,... (NAME starts with a recipe: "
        "qlora+big:train.batch_tokens=32768; gpt2/lora+nogelu:train.disable=gelu; "
        "lora+plain:train.disable=gelu,norms,chunked_loss)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 GPU, 2 CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 6 CPU)")
    ap.add_argument("--epoch", action="store_true", help="GPU: train one whole epoch (measured epoch time)")
    ap.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True, help="GPU: run the TRL reference")
    ap.add_argument("--trl-steps", type=int, default=15)
    ap.add_argument(
        "--trl-tuned",
        nargs="*",
        default=["qlora", "lora"],
        choices=["qlora", "lora"],
        help="GPU: the TRL rows set up for speed (benchmarks/trl_tuned.py); none: --trl-tuned",
    )
    ap.add_argument("--anchor-timeout", type=int, default=600)
    ap.add_argument("--profile", type=int, default=0, help="profile the last N warm-up steps of --profile-variants")
    ap.add_argument("--profile-variants", nargs="*", default=["lora", "qlora"])
    ap.add_argument("--cpu-batch-tokens", type=int, default=2048)
    ap.add_argument("--data")
    ap.add_argument("--tokenizer")
    ap.add_argument("--anchor")
    ap.add_argument("--out", help="results go to OUT.json and OUT.md (default $OUT/throughput or ./throughput)")
    args = ap.parse_args(argv)
    scratch_root()
    from medtune.cli import setup_logging

    setup_logging()  # medtune.training's line per run (batch, attention, loss) on stdout; data and model stay quiet
    for name in ("medtune.data", "medtune.model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.smoke:
        args.cpu, args.cpu_model, args.cpu_batch_tokens = True, "1x64", 512
        args.max_records = args.max_records or 64
        args.warmup, args.steps = 1 if args.warmup is None else args.warmup, 1 if args.steps is None else args.steps
    default_paths(args)
    if args.sizes:
        from medtune.validate import random_shapes

        unknown = [s for s in args.sizes if s not in random_shapes()]
        if unknown:
            ap.error(f"unknown --sizes {' '.join(unknown)}; choose from {' '.join(random_shapes())}")
    if args.smoke and args.sizes:  # the GPU table's rows for these sizes, at toy sizes, on this machine
        args.data = _smoke_records(args.data, args.max_records)
        args.variant = args.variant or [f"lora:{SMOKE_SETS}", f"qlora:{SMOKE_SETS}"]
        args.trl_tuned, args.trl_steps = [r for r in args.trl_tuned if r == "lora"], 2
        gpu_main(args)
        return
    args.sizes = args.sizes or ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"]
    if args.cpu or not torch.cuda.is_available():
        if not args.cpu:
            log("no CUDA GPU: running the CPU mode")
        args.warmup = 2 if args.warmup is None else args.warmup
        args.steps = 6 if args.steps is None else args.steps
        cpu_main(args)
    else:
        args.warmup = 5 if args.warmup is None else args.warmup
        args.steps = 20 if args.steps is None else args.steps
        gpu_main(args)


if __name__ == "__main__":
    main()
