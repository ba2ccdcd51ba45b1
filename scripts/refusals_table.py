"""Render the table "Every refusal case" of docs/reliability.md by running every case of tests/refusals.py.

python scripts/refusals_table.py > /tmp/table.md
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import refusals  # noqa: E402


def main() -> None:
    from medtune import training
    from medtune.cli import main as medtune
    from medtune.merge import merge
    from medtune.validate import load_config

    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        run = base / "run"
        training.run(
            load_config(
                ROOT / "configs" / "tiny-cpu.yaml",
                ["train.max_steps=2", "train.report_to=none", "data.max_records=40"],
                output_dir=str(run),
            )
        )
        merge(run, base / "merged")
        (base / "scratch").mkdir()
        places = refusals.materialize(base / "scratch", run, base / "merged")
        print("| input | exit | what medtune prints |\n| --- | --- | --- |")
        for _, what, args, _ in refusals.CASES:
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = medtune(refusals.argv(args, places))
            line = err.getvalue().strip().splitlines()[-1].replace(d, "…").replace("|", "\\|")
            print(f"| {what} | {rc} | `{line}` |")


if __name__ == "__main__":
    main()
