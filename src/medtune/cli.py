"""The `medtune` command: a thin layer over the stage modules. User errors: one line on stderr, exit 2. A signal
(SIGTERM, SIGINT, SIGUSR1): one line, exit 128 + its number (medtune.stopping). Nothing heavy is imported before
the checks that need no model have passed, so that a refusal takes about a second."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shlex
import sys
import time

from medtune.console import route_libraries, setup_logging
from medtune.errors import did_you_mean
from medtune.hub import settle_offline

__all__ = ["build_parser", "main", "setup_logging"]


@contextlib.contextmanager
def _level(name: str, level: int):
    """The logger `name` at `level` (at least) for the duration."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


def _quiet_ml():
    """The ML stack is about to load: its libraries' log lines go through medtune's console (medtune.console)."""
    route_libraries()


def _command_line(a) -> str:
    return shlex.join(["medtune", *a.argv])


def _eval_at_end(cfg) -> None:
    from medtune import evaluate, stopping

    signum = stopping.requested()
    if signum:  # the signal came as the run wrote its files: they are complete; stop before the evaluation
        raise stopping.Stopped(
            signum,
            f"training finished; eval skipped on {stopping.name(signum)} (run it with: medtune eval {cfg.output_dir})",
            resumable=False,
        )
    evaluate.run(cfg.output_dir)


def cmd_train(a):
    from medtune.config import help_text, load_config

    if a.help_config:
        print(help_text())
        return
    cfg = load_config(a.config, a.set, output_dir=a.output_dir, model__name=a.model, data__source=a.data)
    from medtune import stopping, training

    trained = training.run(cfg, resume=a.resume, command=["medtune", *a.argv])  # locks, handles signals, checks
    if trained is not None and cfg.train.eval_at_end and os.environ.get("RANK", "0") == "0":
        from medtune import rundir

        with rundir.locked(cfg.output_dir, _command_line(a)), stopping.handlers():
            _eval_at_end(cfg)


GENERATE_FLAGS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed")


def cmd_generate(a):
    from medtune import rundir
    from medtune.validate import validate_generate_flags

    validate_generate_flags(a.batch_size, a.question, a.input, a.output)
    run = rundir.open_run(a.run_dir)  # a missing or wrong folder is refused before the ML stack loads
    _quiet_ml()

    from medtune.config import override
    from medtune.data import chat_prompt, with_system_prompt
    from medtune.files import NOTICE
    from medtune.generate import answer, check_output_file, generate_file, read_questions
    from medtune.model import context_length

    if a.output:
        check_output_file(a.output)
    questions = read_questions(a.input) if a.input else [a.question]  # bad input fails before the model loads
    flags = {f"generate.{k}": getattr(a, k) for k in GENERATE_FLAGS} | {"generate.greedy": True if a.greedy else None}
    cfg = override(run.config, flags)
    if a.system is not None:  # data.system_prompt (refused for the instruction template before the model loads)
        cfg.data = with_system_prompt(cfg.data, a.system)
    model, tok = rundir.load_model(run, merge=True)  # the adapter folded into the weights: same answers, faster
    if cfg.data.prompt_format == "chat":  # the run's chat turn, or the chat template around the new system prompt
        cfg.data.chat_prompt = chat_prompt(cfg.data, tok)
    ctx = context_length(model)
    if a.input:
        rows = generate_file(model, tok, questions, a.output, cfg.data, cfg.generate, a.batch_size, context=ctx)
        print(f"wrote {len(rows)} answers to {a.output}\n{NOTICE}")
        return
    print(f"Q: {a.question}\nA: ", end="", flush=True)
    start = time.perf_counter()
    first: list[float] = []  # when the first text came

    def show(text: str) -> None:
        if not first:
            first.append(time.perf_counter())
        print(text, end="", flush=True)

    result = answer(model, tok, a.question, cfg.data, cfg.generate, context=ctx, on_text=show)
    took = time.perf_counter() - start
    if result["stop_reason"] == "length":
        print(f"\n[stopped at max_new_tokens={cfg.generate.max_new_tokens}]")
    elif result["stop_reason"] == "loop":
        print("\n[stopped: the answer started repeating itself]")
    print()
    logging.getLogger("medtune.generate").info(  # the model loaded, the time from the question to the last token
        f"generate: {result['tokens']} tokens in {took:.2f} s ({result['tokens'] / max(took, 1e-9):.0f} tokens/s"
        + (f"; first text after {1000 * (first[0] - start):.0f} ms" if first else "")
        + (_then_rate(result["tokens"], first[0], start + took) if first else "")
        + ")"
    )
    print(NOTICE)


def _then_rate(tokens: int, first: float, end: float) -> str:
    """The decoding rate after the first text: a one-off start (kernels loaded, CUDA graphs captured) sits before
    it. The first text holds at least one token (a few when the loop guard holds text back)."""
    return f", then {(tokens - 1) / (end - first):.0f} tokens/s" if tokens > 1 and end - first > 0.05 else ""


def cmd_eval(a):
    from medtune import rundir

    with rundir.locked(a.run_dir, _command_line(a)):  # eval writes RUN_DIR/eval/
        rundir.open_run(a.run_dir, want="run")  # a missing or wrong folder is refused before the ML stack loads
        _quiet_ml()
        from medtune import evaluate

        evaluate.run(
            a.run_dir,
            data=a.data,
            split=a.split,
            num_samples=a.num_samples,
            greedy=True if a.greedy else False if a.sample else None,
            benchmarks=a.benchmark,
            reuse_base=False if a.rescore_base else None,
        )


def cmd_audit(a):
    from pathlib import Path

    from medtune import audit, data, rundir
    from medtune.config import load_config
    from medtune.errors import MedtuneError
    from medtune.model import load_tokenizer, tokenizer_path

    config = a.config
    if a.model and config is None and rundir.holds_run(Path(a.model).expanduser()):
        config = Path(a.model).expanduser() / rundir.CONFIG  # audit as that run trained: its columns and template
    cfg = load_config(config, a.set, data__source=a.source, model__tokenizer=a.model)
    name = Path(a.source).stem if Path(a.source).suffix else a.source.rstrip("/").split("/")[-1].split(":")[-1]
    out = Path(a.out or f"audit-{name}")
    if out.exists() and not out.is_dir():
        raise MedtuneError(f"--out {out} exists and is not a folder")
    _quiet_ml()
    tok = load_tokenizer(tokenizer_path(cfg.model))
    result = audit.audit(cfg.data, tok, out, against=a.against)  # its progress lines are debug (--verbose)
    print("\n".join(audit.summary_lines(result)))
    findings = rundir.read_json(out / rundir.PHI_REVIEW, required=True)["findings"]
    reviewed = data.reviewed_findings(cfg.data.phi_reviewed)
    blocking = [f for f in findings if f["key"] not in reviewed]
    print(
        f"PHI guard (data.phi={cfg.data.phi}): {len(findings) - len(blocking)} findings already reviewed; "
        + (f"`train` would act on {len(blocking)}" if blocking else "`train` passes")
    )
    print(f"audit: {out / rundir.AUDIT_REPORT}, {out / rundir.AUDIT}, {out / rundir.PHI_REVIEW}")


def cmd_merge(a):
    from pathlib import Path

    from medtune import merge, rundir

    out = Path(a.out).expanduser()
    with rundir.locked(out, _command_line(a), create=True):
        merge.check(a.run_dir, out)  # refusals before the ML stack is imported
        _quiet_ml()
        merge.merge(a.run_dir, out)


def cmd_export(a):
    from pathlib import Path

    from medtune import rundir
    from medtune.errors import MedtuneError

    out = Path(a.out).expanduser()
    if out.is_dir():
        raise MedtuneError(f"--out {out} is a folder; give a file name such as model.gguf")
    if not out.parent.is_dir():
        raise MedtuneError(f"--out {out}: folder {out.parent} not found")
    run = rundir.open_run(a.model_dir)
    with rundir.locked(out, _command_line(a), lock_file=rundir.lock_beside(out)):
        _export(run, out, a.dtype)


def _export(run, out, dtype: str) -> None:
    import tempfile
    from pathlib import Path

    from medtune import merge
    from medtune.files import NOTICE, atomic_write_text
    from medtune.gguf_export import export_gguf, ollama_modelfile

    _quiet_ml()
    if run.is_run:  # a training run: merge into a temporary folder first (GGUF holds a standalone model)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".medtune-export-") as tmp:
            with _level("medtune.merge", logging.WARNING):  # the temporary merge is no news
                merge.merge(run.path, Path(tmp) / "merged")
            export_gguf(Path(tmp) / "merged", out, dtype)
    else:
        export_gguf(run.path, out, dtype)
    modelfile = out.with_name(out.stem + ".Modelfile")
    atomic_write_text(modelfile, ollama_modelfile(out))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {dtype}) and {modelfile} (for Ollama)\n{NOTICE}")


def cmd_serve(a):
    _quiet_ml()
    from medtune.serving import server

    quiet = not logging.getLogger("medtune").isEnabledFor(logging.INFO)
    server.serve(
        a.model_dir,
        host=a.host,
        port=a.port,
        log_level="warning" if quiet else "info",
        max_tokens=a.max_tokens,
        max_prompt_tokens=a.max_prompt_tokens,
        queue_size=a.queue_size,
        max_batch_size=a.max_batch_size,
        worker=a.worker,
        api_key=a.api_key or os.environ.get("MEDTUNE_API_KEY") or None,
        insecure=a.insecure,
    )


def cmd_env(a):
    from medtune.env import report

    print("\n".join(report()))


def _train_parser(sub):
    t = sub.add_parser("train", help="fine-tune a LoRA/QLoRA adapter")
    t.add_argument("--config", help="YAML preset, e.g. configs/gpt2-lora.yaml")
    t.add_argument("--output-dir", help="where the adapter and run files go (config key output_dir)")
    t.add_argument(
        "--model", help="hub id, local model dir, a .gguf file, or random:<gpt2 size> (config key model.name)"
    )
    t.add_argument("--data", help="hub dataset id or a .json/.jsonl/.csv/.parquet file (config key data.source)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in the output dir (none complete: start over)",
    )
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override any config key")
    t.add_argument("--help-config", action="store_true", help="list every config key with its type, default and help")
    t.set_defaults(func=cmd_train)


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
    g.set_defaults(func=cmd_generate)


def _other_parsers(sub):
    from medtune.serving.limits import Limits

    SERVE_DEFAULTS = Limits()
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
    e.set_defaults(func=cmd_eval)

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
    au.set_defaults(func=cmd_audit)

    m = sub.add_parser("merge", help="merge the adapter into the base model and save a standalone model")
    m.add_argument("run_dir")
    m.add_argument("--out", required=True, help="folder for the merged model")
    m.set_defaults(func=cmd_merge)

    x = sub.add_parser("export", help="write a run or merged model as a GGUF file (llama.cpp, Ollama)")
    x.add_argument("model_dir", help="a training output dir (merged first) or a merged model dir")
    x.add_argument("--format", default="gguf", choices=["gguf"])
    x.add_argument("--out", required=True, help="the .gguf file to write")
    x.add_argument("--dtype", default="f16", choices=["f16", "q8_0", "f32"], help="weight type (default f16)")
    x.set_defaults(func=cmd_export)

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
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("env", help="versions, accelerator, hub and caches: what a bug report needs")
    v.set_defaults(func=cmd_env)


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
    _train_parser(sub)
    _generate_parser(sub)
    _other_parsers(sub)
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


def _close_progress_bars() -> None:
    """Close the progress bars a stopped command left open, so that its last line is medtune's."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    from medtune import stopping
    from medtune.errors import MedtuneError

    args = parse(list(sys.argv[1:] if argv is None else argv))
    setup_logging(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    settle_offline()  # before any library that asks the hub is imported
    try:
        if args.command in ("serve", "train"):  # uvicorn handles SIGTERM and SIGINT itself; train's front door too
            args.func(args)
        else:
            with stopping.handlers():
                args.func(args)
    except MedtuneError as e:
        _close_progress_bars()
        print(f"medtune: error: {e}", file=sys.stderr)
        return 2
    except stopping.Stopped as e:
        _close_progress_bars()
        if e.message:
            print(f"medtune: {e.message}", file=sys.stderr)
        return stopping.exit_status(e.signum)
    except KeyboardInterrupt as e:
        _close_progress_bars()
        signum = getattr(e, "signum", stopping.signal.SIGINT)
        print(f"medtune: interrupted by {stopping.name(signum)}", file=sys.stderr)
        return stopping.exit_status(signum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
