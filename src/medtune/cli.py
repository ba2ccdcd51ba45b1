"""The `medtune` command: a thin layer over the stage modules. User errors: one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import os
import sys
import warnings


def _quiet():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    import huggingface_hub.utils.logging as hub_logging
    hub_logging.set_verbosity_error()


def cmd_train(a):
    from medtune.config import load_config
    from medtune import train

    cfg = load_config(a.config, a.set, output_dir=a.output_dir, model__name=a.model, data__source=a.data)
    metrics = train.run(cfg, resume=a.resume)
    if cfg.train.eval_at_end and train.is_main_process():
        from medtune import evaluate
        evaluate.run(cfg.output_dir)
    return metrics


def cmd_generate(a):
    from transformers import TextStreamer

    from medtune.config import load_config
    from medtune.files import NOTICE
    from medtune.generate import answer, generate_file
    from medtune.model import load_for_inference
    from medtune.errors import MedtuneError

    model, tok, cfg = load_for_inference(a.run_dir)
    g = cfg.generate
    for key in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        if getattr(a, key) is not None:
            setattr(g, key, getattr(a, key))
    if a.greedy:
        g.greedy = True
    load_config(overrides=[f"generate.{k}={v}" for k, v in vars(g).items() if v is not None])  # type checks
    if a.input:
        if not a.output:
            raise MedtuneError("--input needs --output FILE.jsonl for the answers")
        rows = generate_file(model, tok, a.input, a.output, cfg.data, g, batch_size=a.batch_size)
        print(f"wrote {len(rows)} answers to {a.output}")
        print(NOTICE)
        return
    if not a.question:
        raise MedtuneError("give a question, or --input FILE")
    print(f"Q: {a.question}\nA: ", end="", flush=True)
    result = answer(model, tok, a.question, cfg.data, g, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))
    if not result["stopped_at_eos"]:
        print(f"\n[stopped at max_new_tokens={g.max_new_tokens}]")
    print(f"\n{NOTICE}")


def cmd_eval(a):
    from medtune import evaluate

    evaluate.run(a.run_dir, data=a.data, split=a.split, num_samples=a.num_samples, greedy=False if a.sample else None)


def cmd_merge(a):
    from medtune import export

    export.merge(a.run_dir, a.out)


def cmd_serve(a):
    from medtune import serve

    serve.serve(a.model_dir, host=a.host, port=a.port, max_tokens=a.max_tokens,
                max_prompt_tokens=a.max_prompt_tokens, queue_size=a.queue_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medtune", description="Fine-tune GPT-2 on medical instruction data with LoRA/QLoRA.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="fine-tune a LoRA/QLoRA adapter")
    t.add_argument("--config", help="YAML preset, e.g. configs/gpt2-lora.yaml")
    t.add_argument("--output-dir", help="where the adapter and run files go (config key output_dir)")
    t.add_argument("--model", help="hub id, local model dir, a .gguf file, or random:<gpt2 size> "
                                    "(config key model.name)")
    t.add_argument("--data", help="hub dataset id or a .json/.jsonl/.csv/.parquet file (config key data.source)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="answer a question (streamed) or a file of questions")
    g.add_argument("run_dir", help="a training output dir (base + adapter) or a merged model dir")
    g.add_argument("question", nargs="?")
    g.add_argument("--input", help=".txt (one question per line) or .jsonl file of questions")
    g.add_argument("--output", help="answers as .jsonl (with --input)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int)
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float)
    g.add_argument("--top-k", type=int)
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--greedy", action="store_true")
    g.set_defaults(func=cmd_generate)

    e = sub.add_parser("eval", help="compare base and tuned model on held-out data; writes metrics.json and report.md")
    e.add_argument("run_dir")
    e.add_argument("--data", help="hub dataset id or local file (default: the split saved by training)")
    e.add_argument("--split", default="test", help="which saved split: test or validation (default test)")
    e.add_argument("--num-samples", type=int, help="questions to generate answers for (default 50)")
    e.add_argument("--sample", action="store_true", help="sample with the run's generate settings instead of greedy "
                                                          "decoding (config key eval.greedy)")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("merge", help="merge the adapter into the base model and save a standalone model")
    m.add_argument("run_dir")
    m.add_argument("--out", required=True, help="folder for the merged model")
    m.set_defaults(func=cmd_merge)

    s = sub.add_parser("serve", help="HTTP API (OpenAI-style /v1/completions) and a small web page")
    s.add_argument("model_dir", help="a training output dir or a merged model dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    s.add_argument("--max-tokens", type=int, help="largest max_tokens a request may ask for (default 512)")
    s.add_argument("--max-prompt-tokens", type=int, help="longest prompt in tokens (default: the model's context)")
    s.add_argument("--queue-size", type=int, help="requests queued or running before 429 busy (default 64)")
    s.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    from medtune.errors import MedtuneError

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet()
    try:
        args.func(args)
    except MedtuneError as e:
        print(f"medtune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medtune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
