#!/usr/bin/env bash
# Refresh constraints-cpu.txt, the lock of the whole dependency set that CI and the README install with: a fresh
# virtual environment gets the CPU torch wheel and medtune with its dev extra WITHOUT the lock (today's newest
# releases within pyproject.toml's ranges), and every installed package's exact version is written down.
# Then run the suite against it (python -m pytest -q tests) before committing the new lock.
#   bash scripts/lock.sh            # about 3 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
torch_pin=$(sed -n 's/.*pip install -q torch==\([0-9.]*\).*/\1/p' .ci/run | head -1)
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "torch==$torch_pin"
"$venv/bin/python" -m pip install -q -e ".[dev]"
{
  echo "# The lock of medtune's dependencies for CPU CI and the README's install line (pip install -c constraints-cpu.txt)."
  echo "# Made by scripts/lock.sh on $(date -u +%Y-%m-%d) with Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())');"
  echo "# tests/test_lockfile.py fails when pyproject.toml asks for something this file does not satisfy."
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -v '^medtune' | sort -f
} > constraints-cpu.txt.tmp
mv constraints-cpu.txt.tmp constraints-cpu.txt
echo "wrote constraints-cpu.txt ($(grep -vc '^#' constraints-cpu.txt) packages)"
