"""The `medtune` command: a thin layer over the stage modules. User errors: one line on stderr, exit 2. A signal
(SIGTERM, SIGINT, SIGUSR1): one line, exit 128 + its number (medtune.stopping). Nothing heavy is imported before
the checks that need no model have passed, so that a refusal takes about a second."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time

from medtune.cli_args import build_parser, parse
from medtune.console import route_libraries, setup_logging
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
    from medtune.config import help_text
    from medtune.validate import load_config

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
    route_libraries()  # the ML stack loads next: its log lines through medtune.console

    from medtune.data import chat_prompt, with_system_prompt
    from medtune.generate import answer, generate_file, read_questions
    from medtune.model import context_length, load_model
    from medtune.notice import NOTICE
    from medtune.validate import check_output_file, override

    if a.output:
        check_output_file(a.output, "--output", "answers.jsonl")
    questions = read_questions(a.input) if a.input else [a.question]  # bad input fails before the model loads
    flags = {f"generate.{k}": getattr(a, k) for k in GENERATE_FLAGS} | {"generate.greedy": True if a.greedy else None}
    cfg = override(run.config, flags)
    if a.system is not None:  # data.system_prompt (refused for the instruction template before the model loads)
        cfg.data = with_system_prompt(cfg.data, a.system)
    model, tok = load_model(run, merge=True)  # the adapter folded into the weights: same answers, faster
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
        route_libraries()
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

    from medtune import audit, rundir
    from medtune.model import load_tokenizer, tokenizer_path
    from medtune.validate import check_output_folder, load_config

    config = a.config
    if a.model and config is None and rundir.holds_run(Path(a.model).expanduser()):
        config = Path(a.model).expanduser() / rundir.CONFIG  # audit as that run trained: its columns and template
    cfg = load_config(config, a.set, data__source=a.source, model__tokenizer=a.model)
    name = Path(a.source).stem if Path(a.source).suffix else a.source.rstrip("/").split("/")[-1].split(":")[-1]
    out = check_output_folder(a.out or f"audit-{name}")
    route_libraries()
    tok = load_tokenizer(tokenizer_path(cfg.model))
    result = audit.audit(cfg.data, tok, out, against=a.against)  # its progress lines are debug (--verbose)
    print("\n".join(audit.summary_lines(result)))
    phi, acts = result["phi"], result["phi"]["unreviewed"]
    print(
        f"PHI guard (data.phi={cfg.data.phi}): {phi['total'] - acts} findings already reviewed; "
        + (f"`train` would act on {acts}" if acts else "`train` passes")
    )
    print("audit: " + ", ".join(map(str, audit.written_files(out))))


def cmd_merge(a):
    from pathlib import Path

    from medtune import merge, rundir

    out = Path(a.out).expanduser()
    with rundir.locked(out, _command_line(a), create=True):
        merge.check(a.run_dir, out)  # refusals before the ML stack is imported
        route_libraries()
        merge.merge(a.run_dir, out)


def cmd_export(a):

    from medtune import rundir
    from medtune.validate import check_output_file

    out = check_output_file(a.out, "--out", "model.gguf")
    run = rundir.open_run(a.model_dir)
    with rundir.locked(out, _command_line(a), lock_file=rundir.lock_beside(out)):
        _export(run, out, a.dtype)


def _export(run, out, dtype: str) -> None:
    import tempfile
    from pathlib import Path

    from medtune import merge
    from medtune.files import atomic_write_text
    from medtune.gguf_export import export_gguf, ollama_modelfile
    from medtune.notice import NOTICE

    route_libraries()
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
    route_libraries()
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


COMMANDS = {
    "train": cmd_train,
    "generate": cmd_generate,
    "eval": cmd_eval,
    "audit": cmd_audit,
    "merge": cmd_merge,
    "export": cmd_export,
    "serve": cmd_serve,
    "env": cmd_env,
}


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
            COMMANDS[args.run](args)
        else:
            with stopping.handlers():
                COMMANDS[args.run](args)
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
