"""Decoding speed (not a timed test): tokens/s and ms a step at 1, 32 and 128 concurrent streams through medtune's
engine, with same-run reference rows for transformers' `model.generate` (a static batch: medtune's path before the
engine) and its continuous batching (`model.generate_batch`).

  python benchmarks/decode.py --cpu                                   # seconds: tiny random GPT-2 (CI smoke test)
  python benchmarks/decode.py --model SmolLM2-135M-Instruct.Q4_1.gguf # a GGUF, a model folder, a run folder
  python benchmarks/decode.py --model random:gpt2-xl --tokenizer ../shared/data/gpt2_tokenizer --streams 1,32

Every stream gets a prompt of --prompt-tokens random token ids and decodes exactly --new-tokens tokens (EOS and the
loop guard off, so every path does the same work), sampled with the defaults of `medtune generate` (T 0.7, top-p 0.9,
top-k 50, repetition penalty 1.1). Each row is timed after one warm-up run of the same shape (CUDA graphs captured,
kernels compiled). Prints one Markdown table.

The `churn` path is what a server sees: 4 x streams requests of 1/2 to 1 x --new-tokens tokens each (seeded), with
`streams` rows at once; a request joins the running batch as soon as one ends (clients that send the next question
at once). `--profile` prints where the host's time goes during the churn rows (cProfile; time spent waiting for the
device shows as `synchronize`); `--trace` (GPU) the share of the time the GPU was busy and its top kernels.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def load(args):
    import torch

    from medtune import rundir
    from medtune.config import ModelConfig
    from medtune.model import load_base_model, load_model, load_tokenizer, tokenizer_path

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    path = Path(args.model)
    if path.is_dir() and (path / rundir.CONFIG).is_file():  # a run or merged folder
        model, tok = load_model(rundir.open_run(path), device=device, merge=True)
        return model, tok, device
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    cfg = ModelConfig(name=args.model, tokenizer=args.tokenizer, dtype=dtype)
    tok = load_tokenizer(tokenizer_path(cfg))
    model = load_base_model(cfg, tok).to(device).eval()
    return model, tok, device


def prompts_for(tok, model, streams: int, length: int) -> list[list[int]]:
    import torch

    vocab = min(len(tok), model.get_output_embeddings().weight.shape[0])
    gen = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab - 1, (streams, length), generator=gen).tolist()


def device_busy(fn, sync) -> str:
    """torch.profiler over one run of fn: the share of the wall time the GPU spent in kernels (the rest: waiting
    for the host) and the kernels that took the most time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in events) / 1e6  # microseconds; kernels on one stream do not overlap
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=12)
    return f"GPU busy {busy:.2f} s of {wall:.2f} s ({busy / wall:.0%}; profiler overhead included)\n{table}"


def timed(fn, sync, profile: bool = False, trace: bool = False) -> float:
    fn()  # warm-up: graphs captured, kernels compiled, allocator warmed
    sync()
    if profile:
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            fn()
            sync()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)
    if trace:
        print(device_busy(fn, sync), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def engine_row(model, tok, prompts, n):
    from medtune.config import GenerateConfig
    from medtune.generate import complete, make_engine

    engine = make_engine(model, tok, len(prompts), len(prompts[0]) + n)
    engine.eos = -1  # fixed lengths: every stream decodes n tokens
    g = GenerateConfig(max_new_tokens=n, loop_guard=0)
    return lambda: complete(model, tok, prompts, g, engine=engine)


def churn_row(model, tok, prompts, n):
    import random

    from medtune.config import GenerateConfig
    from medtune.decoding import Request
    from medtune.generate import make_engine

    engine = make_engine(model, tok, len(prompts), len(prompts[0]) + n)
    engine.eos = -1
    rng = random.Random(0)
    lengths = [rng.randint(n // 2, n) for _ in range(4 * len(prompts))]
    requests = lambda: [
        Request(prompts[i % len(prompts)], GenerateConfig(max_new_tokens=k, loop_guard=0))  # noqa: E731
        for i, k in enumerate(lengths)
    ]
    return lambda: engine.run(requests()), sum(lengths)


# the reference rows sample as the engine rows do (GenerateConfig's defaults)
SAMPLING = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=50, repetition_penalty=1.1)


def generate_row(model, tok, prompts, n):
    import torch

    ids = torch.tensor(prompts, device=model.device)
    kw = dict(
        max_new_tokens=n,
        min_new_tokens=n,
        **SAMPLING,
        pad_token_id=tok.pad_token_id,
        attention_mask=torch.ones_like(ids),
    )
    return lambda: model.generate(ids, **kw)


def generate_batch_row(model, tok, prompts, n):
    from transformers import GenerationConfig

    if not hasattr(model, "generate_batch"):
        return None
    gc = GenerationConfig(
        max_new_tokens=n,
        **SAMPLING,
        eos_token_id=-1,
        pad_token_id=tok.pad_token_id,
    )
    extra = (
        {"persistent_manager": True}
        if "persistent_manager" in inspect.signature(model.generate_batch).parameters
        else {}
    )
    return lambda: model.generate_batch(inputs=prompts, generation_config=gc, **extra)


def check(model, tok, prompts, n: int) -> str:
    """Greedy tokens of the engine (CUDA graphs on a GPU) against model.generate, prompt by prompt."""
    import torch

    from medtune.config import GenerateConfig
    from medtune.generate import complete

    g = GenerateConfig(max_new_tokens=n, greedy=True, repetition_penalty=1.0, loop_guard=0)
    ours = complete(model, tok, prompts, g, batch_size=len(prompts))
    same = 0
    for p, c in zip(prompts, ours):
        ref = model.generate(
            torch.tensor([p], device=model.device),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )[0, len(p) :].tolist()
        ref = ref[: ref.index(tok.eos_token_id)] if tok.eos_token_id in ref else ref
        same += ref == c.token_ids
    return f"greedy parity with model.generate: {same}/{len(prompts)} answers identical ({n} tokens each)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:tiny")
    ap.add_argument("--tokenizer", help="for random:<name> models (default builtin:tiny)")
    ap.add_argument("--streams", default="1,32,128")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--paths", default="engine,generate,generate_batch", help="which rows (comma-separated)")
    ap.add_argument("--cpu", action="store_true", help="tiny random GPT-2 on the CPU, a few tokens: runs in seconds")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="weights (default: bf16 on a GPU)")
    ap.add_argument("--check", action="store_true", help="first: greedy parity of the engine with model.generate")
    ap.add_argument("--profile", action="store_true", help="cProfile of the host during the churn rows")
    ap.add_argument("--trace", action="store_true", help="GPU: torch.profiler during the churn rows (busy share)")
    args = ap.parse_args()
    if args.cpu:
        args.model, args.streams, args.new_tokens, args.prompt_tokens = "random:tiny", "1,8", 16, 16
        args.paths = "engine,churn,generate"
    if args.model.startswith("random:") and not args.tokenizer:
        args.tokenizer = "builtin:tiny"
    import torch
    import transformers

    model, tok, device = load(args)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows = {"engine": engine_row, "churn": churn_row, "generate": generate_row, "generate_batch": generate_batch_row}
    print(
        f"model {args.model} on {torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or 'cpu'}"
        f"; torch {torch.__version__}, transformers {transformers.__version__}; prompts {args.prompt_tokens} tokens,"
        f" {args.new_tokens} new tokens a stream, sampled\n"
    )
    if args.check:
        print(check(model, tok, prompts_for(tok, model, 8, args.prompt_tokens), 32), flush=True)
    print("| path | streams | tokens/s | ms a step |\n| --- | ---: | ---: | ---: |")
    for streams in [int(s) for s in args.streams.split(",")]:
        prompts = prompts_for(tok, model, streams, args.prompt_tokens)
        for name in args.paths.split(","):
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base.set_attn_implementation("sdpa")  # the references run as transformers sets them up
            fn = rows[name](model, tok, prompts, args.new_tokens)
            if fn is None:
                print(f"| {name} | {streams} | n/a | n/a |")
                continue
            fn, tokens = fn if isinstance(fn, tuple) else (fn, streams * args.new_tokens)
            try:
                churn = name == "churn"
                seconds = timed(
                    fn, sync, profile=args.profile and churn, trace=args.trace and churn and device == "cuda"
                )
            except Exception as e:  # a reference path that this transformers version cannot run
                print(f"| {name} | {streams} | failed: {type(e).__name__}: {str(e).splitlines()[0][:80]} | |")
                continue
            print(
                f"| {name} | {streams} | {tokens / seconds:,.0f} | {1000 * seconds * streams / tokens:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
