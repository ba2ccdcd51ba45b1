"""The README stays true to the code: its config reference lists every key with its current default, and its refusal
table lists every case that tests/test_refusals.py checks."""
from pathlib import Path

import refusals

from medtune.config import help_rows

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_config_reference_lists_every_key_and_default():
    for key, _, default, _ in help_rows():
        row = next((ln for ln in README.splitlines() if ln.startswith(f"| `{key}` |")), None)
        assert row is not None, f"{key} missing from the README's configuration reference"
        assert f"`{default.replace('|', chr(92) + '|')}`" in row, f"{key}: README default differs from {default}"


def test_refusal_table_lists_every_case():
    for _, what, _, _ in refusals.CASES:
        assert f"| {what.replace('|', chr(92) + '|')} | 2 |" in README, what
