"""The `medtune` command line: every command's flags, -q / -v anywhere on the line, and a did-you-mean for a
mistyped command or flag. Parsing imports nothing heavy (medtune.cli runs the commands)."""

from __future__ import annotations

import argparse
import re

from medtune.errors import did_you_mean


def _train_parser(sub):
    t = sub.add_parser("train", help="fine-tune a LoRA/QLoRA adapter")
    t.add_argument("--config", help="YAML preset, e.g. configs/gpt2-lora.yaml")
    t.add_argument("--output-dir", help="where the adapter and run files go (config key output_dir)")
    t.add_argument("--model", help="hub id, local model dir, a .gguf file, or random:<shape> (config key model.name)")
    t.add_argument("--data", help="hub dataset id or a .json/.jsonl/.csv/.parquet file (config key data.source)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output dir (none complete: start over)",
    )
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    t.add_argument("--help-config", action="store_true", help="list every config key with its type, default and help")
    t.set_defaults(run="train")


def _generate_parser(sub):
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
    g.add_argument(
        "--system",
        metavar="TEXT",
        help="system message (config key data.system_prompt) for runs trained "
        "in chat format or on chat records; '' for none",
    )
    g.set_defaults(run="generate")


def _eval_parser(sub):
    e = sub.add_parser("eval", help="compare base and tuned model on held-out data; writes metrics.json and report.md")
    e.add_argument("run_dir")
    e.add_argument("--data", help="hub dataset id or local file (default: the split saved by training)")
    e.add_argument("--split", help="which saved split: test or validation (default: config key eval.split)")
    e.add_argument(
        "--num-samples", type=int, help="questions to generate answers for (default: config key eval.num_samples, 300)"
    )
    decoding = e.add_mutually_exclusive_group()
    decoding.add_argument(
        "--greedy",
        action="store_true",
        help="greedy decoding without repetition penalty instead of the "
        "run's generate settings (config key eval.greedy)",
    )
    decoding.add_argument(
        "--sample",
        action="store_true",
        help="sample with the run's temperature, top-p and seed even where the run decodes greedily "
        "(default: the run's generate settings as they are)",
    )
    e.add_argument(
        "--rescore-base",
        action="store_true",
        help="score the base model again (and replace its kept scores) where an earlier eval of the same base, "
        "inputs and settings kept them (config key eval.reuse_base)",
    )
    e.add_argument(
        "--benchmark",
        metavar="NAME[=FILE],...",
        help="multiple-choice benchmarks: medmcqa, medqa, "
        "pubmedqa, mmlu_medical (or mmlu_anatomy, ...); NAME=FILE reads a local copy instead of the hub, in "
        "the hub's columns or the original release's layout (MedMCQA dev.json, MMLU's header-less CSVs "
        "or their data/test folder, PubMedQA ori_pqal.json)",
    )
    e.set_defaults(run="eval")


def _data_merge_export_parsers(sub):
    d = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    au = d.add_parser(
        "audit",
        help="records, duplicates, lengths, contamination and protected health information of "
        "a data source; writes audit.json, audit.md, lengths.png",
    )
    au.add_argument("source", help="hub dataset id or a .json/.jsonl/.csv/.parquet file (as `train --data`)")
    au.add_argument("--out", help="folder for the audit (default: audit-<name>)")
    au.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="FILE",
        help="an evaluation set to check the train split against (n-gram overlap); repeatable",
    )
    au.add_argument("--config", help="YAML preset: column mapping, split, tokenizer (model.tokenizer / model.name)")
    au.add_argument(
        "--model",
        metavar="PATH",
        help="the tokenizer to measure lengths with: a local model folder, a .gguf file, or a run folder (whose "
        "config is then the default --config); config key model.tokenizer",
    )
    au.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    au.set_defaults(run="audit")

    m = sub.add_parser("merge", help="merge the adapter into the base model and save a standalone model")
    m.add_argument("run_dir")
    m.add_argument("--out", required=True, help="folder for the merged model")
    m.set_defaults(run="merge")

    x = sub.add_parser("export", help="write a run or merged model as a GGUF file (llama.cpp, Ollama)")
    x.add_argument("model_dir", help="a training output dir (merged first) or a merged model dir")
    x.add_argument("--format", default="gguf", choices=["gguf"])
    x.add_argument("--out", required=True, help="the .gguf file to write")
    x.add_argument("--dtype", default="f16", choices=["f16", "q8_0", "f32"], help="weight type (default f16)")
    x.set_defaults(run="export")


def _serve_parser(sub):
    from medtune.serving.limits import Limits

    SERVE_DEFAULTS = Limits()
    s = sub.add_parser("serve", help="HTTP API (OpenAI-style /v1/completions) and a small web page")
    s.add_argument("model_dir", help="a training output dir or a merged model dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    s.add_argument(
        "--max-tokens", type=int, help=f"largest max_tokens a request may ask for (default {SERVE_DEFAULTS.max_tokens})"
    )
    s.add_argument("--max-prompt-tokens", type=int, help="longest prompt in tokens (default: the model's context)")
    s.add_argument(
        "--queue-size",
        type=int,
        help=f"requests queued or running before 429 busy (default {SERVE_DEFAULTS.queue_size})",
    )
    s.add_argument(
        "--max-batch-size",
        type=int,
        help=f"requests decoded together, continuously batched (default "
        f"{SERVE_DEFAULTS.max_batch_size}; 1: one at a time)",
    )
    s.add_argument(
        "--worker",
        choices=["auto", "process", "thread"],
        help="where the decoding engine runs: its own process (so HTTP work never delays a GPU step), a thread of "
        "the server's, or auto (default: a process on CUDA, a thread on CPU)",
    )
    s.add_argument(
        "--api-key",
        help="require `Authorization: Bearer KEY` on every route but /health (default: env MEDTUNE_API_KEY)",
    )
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without an API key")
    s.set_defaults(run="serve")
    v = sub.add_parser("env", help="versions, accelerator, hub and caches: what a bug report needs")
    v.set_defaults(run="env")


class Parser(argparse.ArgumentParser):
    """argparse with a did-you-mean for a mistyped command or flag."""

    def error(self, message: str):
        bad = re.search(r"invalid choice: '([^']*)'", message)
        if bad:
            message += did_you_mean(bad[1], list(_choices(self)))
        super().error(message)


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _talk_flags(parser: argparse.ArgumentParser, default) -> None:
    """-q / -v, before or after the command: the subcommands' copies leave the value unset unless given."""
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")
    talk.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug lines too, and the libraries' warnings"
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="medtune", description="Fine-tune GPT-2 on medical instruction data with LoRA/QLoRA.")
    _talk_flags(p, False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_train_parser, _generate_parser, _eval_parser, _data_merge_export_parsers, _serve_parser):
        add(sub)
    for leaf in _leaf_parsers(p):
        _talk_flags(leaf, argparse.SUPPRESS)
    return p


def _leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    children = _choices(parser)
    return [leaf for c in children.values() for leaf in _leaf_parsers(c)] if children else [parser]


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line, refused in one line (argparse's usage and `error:`, exit 2) with a did-you-mean for a
    mistyped flag; -q and -v together are refused wherever they stand."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        leaf = _choices(parser)[args.command]
        if _choices(leaf):
            leaf = _choices(leaf)[getattr(args, f"{args.command}_command")]
        flags = [o for a in leaf._actions for o in a.option_strings if o.startswith("--")]
        flag = next((x.split("=")[0] for x in extra if x.startswith("--")), "")
        leaf.error(f"unrecognized arguments: {' '.join(extra)}{did_you_mean(flag, flags) if flag else ''}")
    if args.quiet and args.verbose:
        parser.error("argument -v/--verbose: not allowed with argument -q/--quiet")
    args.argv = list(argv)
    return args
