"""Every bad input: one clear line on stderr, exit code 2, no traceback."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture
def medtune(root):
    """A function: (*args, env=None) -> the finished `python -m medtune ARGS` process, run from the repository root."""

    def run(*args, env=None):
        e = {k: v for k, v in {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}.items() if v is not None}
        return subprocess.run(
            [sys.executable, "-m", "medtune", *args], capture_output=True, text=True, timeout=240, cwd=root, env=e
        )

    return run


def assert_clean_error(p, needle):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("medtune: error:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr


@pytest.fixture
def bad_files(tmp_path, make_records, write_jsonl):
    rows = make_records(20)
    empty = [dict(r) for r in rows]
    empty[6]["output"] = " "
    nonstr = [dict(r) for r in rows]
    nonstr[2]["input"] = 5
    long = [dict(r) for r in rows]
    long[9]["output"] = "word " * 400
    return {
        "missing-column": write_jsonl(tmp_path / "mc.jsonl", [{"instruction": "x", "input": "y"}] * 3),
        "empty": write_jsonl(tmp_path / "em.jsonl", empty),
        "nonstr": write_jsonl(tmp_path / "ns.jsonl", nonstr),
        "long": write_jsonl(tmp_path / "lg.jsonl", long),
    }


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "{tmp}/nope.jsonl"], "data file not found"),
        (["--data", "{missing-column}"], "missing column"),
        (["--data", "{empty}"], "rows 7"),
        (["--data", "{nonstr}"], "rows 3"),
        (["--data", "{long}", "--set", "data.overlong=error"], "rows 10"),
        (["--data", "medalpaca/medical_meadow_wikidoc_patient_information"], "hub is unreachable"),
        (["--model", "gpt2", "--set", "model.tokenizer=gpt2"], "hub is unreachable"),
        (["--model", "random:gpt9"], "unknown random model"),
        (["--model", "./no/such/model"], "not found"),
        (["--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
        (["--set", "train.batch_size=big"], "train.batch_size"),
        (["--resume"], "--resume: output dir"),
    ],
)
def test_train_errors(tmp_path, tiny_preset, bad_files, capsys, monkeypatch, args, needle):
    """In-process (one import for all cases); any exception other than MedtuneError would fail the test."""
    from medtune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [a.format(tmp=tmp_path, **bad_files) for a in args]
    rc = main(["train", "--config", str(tiny_preset), "--output-dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert_clean_error(subprocess.CompletedProcess([], rc, "", err), needle)
    assert not (tmp_path / "out" / "adapter_model.safetensors").exists()


def test_missing_config_and_run_dir(tmp_path, medtune):
    assert_clean_error(medtune("train", "--config", str(tmp_path / "none.yaml")), "config file not found")
    assert_clean_error(medtune("generate", str(tmp_path / "none"), "hi"), "folder not found")
    assert_clean_error(medtune("generate", str(tmp_path), "hi"), "neither an adapter")


MEDTUNE_LINE = re.compile(
    r"^(data|model|train|step \d+/\d+|done|resume|eval|generate|Q|A|wrote)[: ]|^Not medical advice"
)


def test_train_then_generate_cli(tmp_path, tiny_preset, medtune):
    """The README's quick start, shortened: every line it prints is medtune's (no library's warning, hub look-up or
    progress bar), with HF_HUB_OFFLINE unset: medtune finds the hub unreachable and tells the libraries itself."""
    out = tmp_path / "run"
    offline_by_medtune = {"HF_HUB_OFFLINE": None}
    p = medtune(
        "train",
        "--config",
        str(tiny_preset),
        "--output-dir",
        str(out),
        "--set",
        "train.max_steps=4",
        "--set",
        "train.logging_steps=2",
        "--set",
        "train.report_to=none",
        env=offline_by_medtune,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "trainable" in p.stdout and "effective batch size" in p.stdout
    assert p.stderr == "" and all(MEDTUNE_LINE.match(ln) for ln in p.stdout.splitlines()), p.stdout + p.stderr
    assert re.search(r"^step 4/4  loss \d+\.\d{4}  lr \S+  [\d,]+ tokens/s  \d+:\d\d left$", p.stdout, re.M), p.stdout
    g = medtune(
        "generate",
        str(out),
        "Patient symptoms include fever and cough.",
        "--max-new-tokens",
        "5",
        "--greedy",
        env=offline_by_medtune,
    )
    assert g.returncode == 0, g.stderr[-2000:]
    assert "Not medical advice" in g.stdout
    assert g.stderr == "", g.stderr  # e.g. bitsandbytes' hub look-up for CPU kernels (the `kernels` package)
    assert re.search(r"^generate: \d+ tokens in \d+\.\d\d s \(\d+ tokens/s", g.stdout, re.MULTILINE), g.stdout
    again = medtune("train", "--config", str(tiny_preset), "--output-dir", str(out))
    assert_clean_error(again, "already holds a run")
    assert (out / "adapter_model.safetensors").is_file()  # nothing lost
    done = medtune(
        "train", "--config", str(tiny_preset), "--output-dir", str(out), "--set", "train.max_steps=4", "--resume", "-q"
    )
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stdout + done.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]  # a finished run trains nothing


NO_ML = textwrap.dedent("""
    import sys
    from medtune.cli import main
    try:
        rc = main(sys.argv[1:])
    except SystemExit as e:  # --help
        rc = e.code
    print("imported:", " ".join(m for m in ("torch", "transformers", "peft", "accelerate", "datasets")
                                if m in sys.modules) or "none")
    sys.exit(rc)
""")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--data", "{tmp}/bad.jsonl"], "line 2 is not valid JSON"),
        (["--data", "{tmp}/latin1.json"], "not UTF-8 text (byte 41)"),
        (["--data", "{tmp}/empty.csv"], "empty or whitespace-only fields in rows 1"),
        (["--set", "train.learning_rate=-1"], "must be > 0"),
        (["--model", "random:gpt9"], "unknown random model"),
        (["--output-dir", "{tmp}/a-file"], "exists and is not a folder"),
        (["--output-dir", "{tmp}/none", "--resume"], "--resume: output dir"),
        (["--output-dir", "{tmp}/busy"], "is in use by `medtune train"),
    ],
    ids=["bad-jsonl", "not-utf8", "empty-answer", "config", "random-name", "output-file", "resume-missing", "in-use"],
)
def test_refusals_that_need_no_model_import_no_ml_stack(tmp_path, tiny_preset, root, args, needle):
    """`train` checks its config, output folder and data before it imports torch & co: such a refusal takes about a
    second on 2 CPU cores (docs/reliability.md), not the 10 s that importing the ML stack costs."""
    import refusals

    rec = {"instruction": "Answer.", "input": "What is asthma?", "output": "A disease of the airways."}
    (tmp_path / "bad.jsonl").write_text(json.dumps(rec) + "\n{not json\n")
    (tmp_path / "latin1.json").write_bytes(
        json.dumps([{**rec, "input": "caf\u00e9"}], ensure_ascii=False).encode("latin-1")
    )
    (tmp_path / "empty.csv").write_text("instruction,input,output\nAnswer.,What is asthma?, \n")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "busy").mkdir()
    refusals.hold_lock(tmp_path / "busy" / ".medtune.lock", "medtune train --output-dir busy")
    argv = [
        "train",
        "--config",
        str(tiny_preset),
        "--output-dir",
        str(tmp_path / "out"),
        *[a.format(tmp=tmp_path) for a in args],
    ]
    p = subprocess.run(
        [sys.executable, "-c", NO_ML, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert_clean_error(p, needle)
    assert p.stderr.count("\n") == 1  # nothing else on stderr
    assert p.stdout.strip() == "imported: none", p.stdout
    assert not (tmp_path / "out").exists()


def test_help_imports_no_ml_stack(root):
    for argv in (["--help"], ["train", "--help"], ["train", "--help-config"]):
        p = subprocess.run([sys.executable, "-c", NO_ML, *argv], capture_output=True, text=True, timeout=120, cwd=root)
        assert p.returncode == 0 and p.stdout.strip().endswith("imported: none"), (argv, p.stdout[-300:], p.stderr)


def test_log_lines_quiet_and_verbose(capsys):
    """medtune's log lines as print wrote them (the message alone): info on stdout, warnings on stderr; --quiet keeps
    warnings and errors only, --verbose adds debug lines; the two flags exclude each other."""
    import logging

    from medtune.cli import build_parser, setup_logging

    log = logging.getLogger("medtune.data")
    try:
        for level, shown in (
            (logging.INFO, "info warning"),
            (logging.WARNING, "warning"),
            (logging.DEBUG, "debug info warning"),
        ):
            setup_logging(level)
            log.debug("data: debug")
            log.info("data: info")
            log.warning("data: warning: careful")
            out, err = capsys.readouterr()
            assert ("data: debug\n" in out) == ("debug" in shown) and ("data: info\n" in out) == ("info" in shown)
            assert err == "data: warning: careful\n" and "careful" not in out
        before = list(logging.getLogger().handlers)
        logging.warning("root: a library's module-level warning")  # would call logging.basicConfig without a handler
        assert logging.getLogger().handlers == before  # so no second handler: medtune's lines are not doubled
        log.info("data: once")
        out, err = capsys.readouterr()
        assert out == "data: once\n" and err == "root: a library's module-level warning\n"
    finally:
        setup_logging()
    assert build_parser().parse_args(["-q", "eval", "run"]).quiet
    assert build_parser().parse_args(["--verbose", "eval", "run"]).verbose
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--quiet", "--verbose", "eval", "run"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # eval: greedy and sampled decoding at once is a contradiction, not a choice
        build_parser().parse_args(["eval", "run", "--greedy", "--sample"])
    assert "argument --sample: not allowed with argument --greedy" in capsys.readouterr().err


def test_libraries_speak_with_verbose_only(capsys):
    """A library's warning (a logger's, a Python warning, a hub look-up) never reaches the terminal in normal use;
    --verbose shows it; medtune's own warnings always show."""
    import logging
    import warnings

    from medtune.cli import setup_logging

    try:
        for level, library_shown in ((logging.INFO, False), (logging.WARNING, False), (logging.DEBUG, True)):
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                setup_logging(level)  # Python warnings go through logging from here
                logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check")
                warnings.warn("`x` is deprecated and will be removed in v6", FutureWarning, stacklevel=1)
                logging.getLogger("medtune.data").warning("data: warning: careful")
                logging.getLogger("some.library").error("a library's error")
            err = capsys.readouterr().err
            assert ("Skipping publisher trust check" in err) == library_shown, err
            assert ("is deprecated" in err) == library_shown, err
            assert "data: warning: careful" in err and "a library's error" in err
    finally:
        setup_logging()
        logging.captureWarnings(False)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["trian"], "did you mean 'train'?"),
        (["train", "--otput-dir", "x"], "unrecognized arguments: --otput-dir x; did you mean '--output-dir'?"),
        (["data", "audit", "f.jsonl", "--confg=c.yaml"], "did you mean '--config'?"),
        (["-q", "eval", "run", "-v"], "not allowed with argument -q/--quiet"),
    ],
)
def test_mistyped_commands_and_flags(capsys, argv, needle):
    from medtune.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_quiet_and_verbose_anywhere_on_the_line():
    from medtune.cli import parse

    assert parse(["serve", "run", "-q"]).quiet and not parse(["serve", "run", "-q"]).verbose
    assert parse(["data", "audit", "f.jsonl", "--verbose"]).verbose
    assert parse(["-v", "generate", "run", "hi"]).verbose
    plain = parse(["eval", "run"])
    assert not plain.quiet and not plain.verbose


def test_env_fits_a_bug_report(medtune):
    p = medtune("env")
    assert p.returncode == 0 and p.stderr == "", p.stderr
    for needle in (
        "medtune: ",
        "python: ",
        "torch: ",
        "bitsandbytes backend: ",
        "transformers ",
        "peft ",
        "trl ",
        "accelerate ",
        "datasets ",
        "hub: off",
        "caches: ",
    ):
        assert needle in p.stdout, (needle, p.stdout)
    assert len(p.stdout.splitlines()) <= 24  # one screen


def test_generate_speed_line_separates_the_start_from_the_decoding_rate():
    from medtune.cli import _then_rate

    assert _then_rate(73, 1.0, 1.144) == ", then 500 tokens/s"  # 72 tokens after the first text, in 0.144 s
    assert _then_rate(1, 1.0, 2.0) == ""  # nothing came after the first text
    assert _then_rate(5, 1.0, 1.01) == ""  # too short a time to give a rate


def test_audit_command_names_every_file_it_wrote(tmp_path, capsys):
    from medtune.audit import written_files
    from medtune.cli import main

    out = tmp_path / "audit"
    assert main(["data", "audit", "builtin:sample", "--set", "model.tokenizer=builtin:tiny", "--out", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == "audit: " + ", ".join(map(str, written_files(out)))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written_files(out))
