"""The README and docs/ stay true to the code: the README stays a five-minute read, its quick start works, every
`medtune` command shown parses, links between pages resolve, the configuration reference (docs/configuration.md)
lists every key with its current default, and the refusal table (docs/reliability.md) lists every case that
tests/test_refusals.py checks."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import refusals

from medtune.cli import build_parser
from medtune.config import help_rows

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
PAGES = {"README.md": README, **{f"docs/{name}": text for name, text in DOCS.items()}}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The shell commands of a bash block: continuation lines joined, comments dropped, split at && and ;."""
    cmds = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        cmd = []
        for w in [*words, "&&"]:
            if w in ("&&", ";", "||"):
                cmds += [cmd] if cmd else []
                cmd = []
            else:
                cmd.append(w)
    return cmds


def medtune_args(cmd: list[str]) -> list[str] | None:
    """The arguments of `medtune ...`, `python -m medtune ...` or a launcher's `... -m medtune ...`; else None."""
    while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):  # VAR=value prefixes
        cmd = cmd[1:]
    if cmd[:1] == ["medtune"]:
        return cmd[1:]
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m" and cmd[i + 1] == "medtune":
            return cmd[i + 2 :]
    return None


def shown_medtune_commands():
    for page, text in PAGES.items():
        for block in bash_blocks(text):
            for cmd in commands(block):
                args = medtune_args(cmd)
                if args is not None:
                    yield page, args


def test_readme_is_a_five_minute_read():
    size = len(README.encode())
    assert size <= 12_000, f"README.md is {size} bytes; move detail into docs/"


def test_readme_quick_start_is_the_docs_home_and_ci_runs_its_test_command():
    quick = bash_blocks(README)[0]
    assert "medtune train --config configs/tiny-cpu.yaml --output-dir runs/tiny && medtune generate runs/tiny" in quick
    assert quick in bash_blocks(DOCS["index.md"]), "docs/index.md shows another quick start than the README"
    test_line = next(ln for ln in quick.splitlines() if ln.startswith("python -m pytest"))
    assert test_line in (ROOT / ".ci" / "run").read_text(), f"CI does not run the README's {test_line!r}"


def test_readme_quick_start_trains_and_generates(tmp_path):
    """The README's first command, as shown, with 2 steps instead of the preset's epochs and a short answer."""
    line = next(ln for ln in bash_blocks(README)[0].splitlines() if ln.startswith("medtune train"))
    train, generate = (medtune_args(c) for c in commands(line))
    out = str(tmp_path / "tiny")
    train = [out if a == "runs/tiny" else a for a in train] + [
        "--set",
        "train.max_steps=2",
        "--set",
        "train.report_to=none",
    ]
    generate = [out if a == "runs/tiny" else a for a in generate] + ["--max-new-tokens", "5"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    for args in (train, generate):
        p = subprocess.run(
            [sys.executable, "-m", "medtune", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
        )
        assert p.returncode == 0, (args, p.stderr[-2000:])
    assert "Not medical advice" in p.stdout


@pytest.mark.parametrize("page, args", list(shown_medtune_commands()), ids=lambda v: v if isinstance(v, str) else "")
def test_shown_commands_parse(page, args):
    """Every `medtune` command in a bash block of the README or docs/ is accepted by the CLI's parser, and the
    presets it names exist."""
    try:
        build_parser().parse_args(args)
    except SystemExit as e:
        pytest.fail(f"{page}: `medtune {shlex.join(args)}` does not parse (exit {e.code})")
    for a in args:
        if a.startswith("configs/"):
            assert (ROOT / a).is_file(), f"{page}: {a} does not exist"


def test_readme_commands_cover_the_main_commands():
    shown = {
        args[0] if args[0] != "data" else "data audit" for page, args in shown_medtune_commands() if page == "README.md"
    }
    assert {"train", "data audit", "eval", "generate", "merge", "export", "serve"} <= shown


def test_relative_links_resolve():
    """Links from the README into docs/ and between docs pages name files that exist (mkdocs --strict checks the
    anchors inside docs/; the README's links are checked here)."""
    for page, text in PAGES.items():
        base = (ROOT / page).parent
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            assert (base / target).is_file(), f"{page} links to {target}, which does not exist"


def test_config_reference_lists_every_key_and_default():
    page = DOCS["configuration.md"]
    for key, _, default, _ in help_rows():
        row = next((ln for ln in page.splitlines() if ln.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} missing from docs/configuration.md"
        assert f"`{default.replace('|', chr(92) + '|')}`" in row, f"{key}: docs/configuration.md default differs"


def test_refusal_table_lists_every_case():
    page = DOCS["reliability.md"]
    for _, what, _, _ in refusals.CASES:
        assert f"| {what.replace('|', chr(92) + '|')} | 2 |" in page, what
