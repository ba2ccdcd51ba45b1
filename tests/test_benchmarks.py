"""Every script in benchmarks/ runs: each as a real subprocess at toy sizes (seconds each), exit status 0, its table
printed. The numbers mean nothing at these sizes; what is checked is that the scripts still fit the code they drive
(eval_speed.py and decoding_sweep.py had called a function that no longer existed; throughput.py --cpu crashed in its
tutorial row). GPU-only shell scripts get a syntax check and their dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TINY_TOKENIZER = ROOT / "src" / "medtune" / "assets" / "tiny_tokenizer"
SAMPLE = ROOT / "src" / "medtune" / "sample_data" / "medical_qa.jsonl"
COVERED = {
    "throughput.py",
    "trl_tuned.py",
    "load.py",
    "eval_speed.py",
    "decoding_sweep.py",
    "phi_recall.py",
    "decode.py",
    "refusal_times.py",
    "recipe_sweep.sh",
    "ddp_gpu.sh",
    "rank_balance.py",
    "gpu_suite.sh",
    "sweep_rule.py",
}  # each has a test below


def run(argv: list[str], tmp_path: Path, timeout: int = 300, **env: str) -> str:
    """Run argv from the repository root with this checkout's medtune; assert exit 0; return stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "TMPDIR": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert p.returncode == 0, f"{argv} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def script(name: str, *args, tmp_path: Path, **env: str) -> str:
    return run([sys.executable, str(BENCH / name), *map(str, args)], tmp_path, **env)


def rows(out: str, first: str | None = None) -> list[list[str]]:
    """The cells of the Markdown table rows of `out` whose first cell is `first` (None: all), headers left out."""
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in out.splitlines() if ln.startswith("| ")]
    sep = [all(c and set(c) <= set("-:") for c in row) for row in cells]
    body = [row for k, row in enumerate(cells) if not sep[k] and not (k + 1 < len(cells) and sep[k + 1])]
    return [row for row in body if first is None or row[0] == first]


def number(cell: str) -> float:
    return float(cell.replace(",", "").rstrip("%"))


def test_every_benchmark_script_has_a_smoke_test():
    assert {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")} == COVERED


def test_trl_tuned(tmp_path):
    data = tmp_path / "sample.json"
    data.write_text(json.dumps([json.loads(ln) for ln in SAMPLE.read_text().splitlines()[:32]]))
    out = script(
        "trl_tuned.py",
        "lora",
        "tiny",
        "--cpu",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--tokens",
        "2048",
        "--tokenizer",
        TINY_TOKENIZER,
        "--data",
        data,
        tmp_path=tmp_path,
    )
    (line,) = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["steps"] == 2 and result["tok_s"] > 0 and result["checkpointing"] is False


def test_throughput_cpu_mode(tmp_path):
    data = tmp_path / "sample.json"  # the tutorial row reads a .json list
    data.write_text(json.dumps([json.loads(ln) for ln in SAMPLE.read_text().splitlines()[:64]]))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = script(
        "throughput.py",
        "--smoke",
        "--data",
        data,
        "--tokenizer",
        TINY_TOKENIZER,
        tmp_path=tmp_path,
        TMPDIR=str(scratch),
    )
    left = [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor")]  # torch's compile cache
    assert not left  # its model and run folders are removed (a lent GPU's disk filled once)
    for recipe in ("tutorial", "medtune-qlora", "medtune-lora"):
        (row,) = rows(out, recipe)
        assert number(row[1]) > 0 and number(row[2]) > 0, row  # tokens/s, tokens/step
    assert float(re.search(r"^ratio medtune/tutorial: (\d+\.\d+)$", out, re.MULTILINE).group(1)) > 0


def test_decode_cpu(tmp_path):
    out = script("decode.py", "--cpu", "--trace", tmp_path=tmp_path)  # --trace: the profiler path runs too
    for path in ("engine", "generate"):
        assert [r[1] for r in rows(out, path)] == ["1", "8"]
        assert all(number(r[2]) > 0 for r in rows(out, path))


def test_eval_speed(tiny_run, tmp_path):
    out = script("eval_speed.py", tiny_run(), "--num-samples", "2", "--max-new-tokens", "4", tmp_path=tmp_path)
    lines = [ln for ln in out.splitlines() if " batch " in ln]
    assert [ln.split(" batch")[0].strip() for ln in lines] == ["adapter separate"] * 2 + ["adapter merged"] * 2
    assert all("ms per step" in ln for ln in lines)


def test_decoding_sweep(tiny_run, tmp_path):
    saved = tmp_path / "answers.jsonl"
    out = script(
        "decoding_sweep.py",
        tiny_run(),
        "--num-samples",
        "2",
        "--max-new-tokens",
        "4",
        "--save",
        saved,
        tmp_path=tmp_path,
    )
    table = rows(out)
    assert len(table) == 21 and all(0 <= number(r[1].split()[0]) <= 1 for r in table)
    assert all(0 <= number(r[4]) <= 100 for r in table)  # looping answers
    answers = [json.loads(ln) for ln in saved.read_text().splitlines()]
    assert len(answers) == 21 * 2 + 2 and answers[-1]["setting"] == "reference"


def test_load(tiny_run, tmp_path):
    out = script(
        "load.py",
        "--model-dir",
        tiny_run(),
        "--requests",
        "4",
        "--concurrency",
        "1,2",
        "--max-batch-size",
        "2",
        "--max-tokens",
        "2-4",
        "--stream-every",
        "2",
        "--worker",
        "thread,process",
        "--client-processes",
        "2",
        tmp_path=tmp_path,
    )
    table = rows(out, "2")
    assert [r[1:3] for r in table] == [["thread", "1"], ["thread", "2"], ["process", "1"], ["process", "2"]]
    assert all(r[-1] == "0" for r in table)  # errors
    assert all(number(r[3]) > 0 for r in table)  # requests/s


def test_phi_recall(tmp_path):
    out = script("phi_recall.py", "--no-wikidoc", tmp_path=tmp_path)
    assert out.count("\nall ") == 5  # the planted set and four hand-written sets
    assert "Clean medical sentences:" in out and "WikiDoc skipped" in out


def test_rank_balance(tmp_path):
    out = script(
        "rank_balance.py",
        TINY_TOKENIZER,
        SAMPLE,
        "--config",
        ROOT / "configs" / "tiny-cpu.yaml",
        "--global-batch",
        8,
        "--batch-tokens",
        1024,
        tmp_path=tmp_path,
    )
    table = rows(out)
    assert len(table) == 3 and all(number(r[4]) >= 1.0 and number(r[5]) >= 1.0 for r in table)  # most loaded >= mean


def test_refusal_times(tmp_path):
    out = script("refusal_times.py", "--smoke", tmp_path=tmp_path)
    table = rows(out)
    assert [r[1] for r in table] == ["0", "0", "2"] and all(number(r[2]) > 0 for r in table)


def test_recipe_sweep(tmp_path):
    """Rows in the order given, the benchmarks each variant forgets (BENCHMARK, a few questions each), and the choice:
    never a variant with EOS under 95% (a random tiny model never ends its answers) nor one whose training failed,
    even when an earlier sweep left its metrics behind."""
    sweep = BENCH / "recipe_sweep.sh"
    run(["bash", "-n", str(sweep)], tmp_path)
    variant = (
        "tiny:model.tokenizer=builtin:tiny,data.max_records=40,train.max_steps=2,train.eval_on_start=false,"
        "eval.num_samples=2,eval.max_new_tokens=4,eval.benchmark_limit=3"
    )
    stale = tmp_path / "sweep" / "bad" / "eval" / "metrics.json"  # a failed variant's leftover from an earlier sweep
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"tuned": {"rouge_l": 0.9, "eos_rate": 1.0}, "benchmarks": {}}))
    medbench = ROOT.parent / "shared" / "data" / "medbench"
    files = {"pubmedqa": "pubmedqa_pqa_labeled", "medqa": "medqa_usmle_4opt_test", "mmlu_medical": "mmlu_medical_test"}
    spec = ",".join(f"{n}={medbench / f}.parquet" for n, f in files.items())
    env = {"BENCHMARK": spec} if all((medbench / f"{f}.parquet").is_file() for f in files.values()) else {}
    p = subprocess.run(
        [
            "bash",
            str(sweep),
            "random:tiny",
            "builtin:sample",
            str(tmp_path / "sweep"),
            variant,
            "b" + variant[4:] + ",model.lora_targets=[c_attn, c_fc]",  # a list value: its commas stay inside
            "bad:train.no_such_key=1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "CONFIG": str(ROOT / "configs" / "tiny-cpu.yaml"),
            "PYTHON": sys.executable,
            "JOBS": "2",
            **env,
        },
        check=False,
    )
    out = p.stdout
    assert p.returncode == 1, out + p.stderr  # the bad variant failed
    table = [r for r in out.splitlines() if r.startswith("| tiny") or r.startswith("| b ")]
    assert [r.split("|")[1].strip() for r in table] == ["tiny", "b"], out
    for row in (r.split("|")[1:-1] for r in table):
        assert number(row[1]) > 0 and 0 <= number(row[3].split()[0]) <= 1, row  # validation loss, ROUGE-L
        forgotten = row[7].strip()  # "-" without BENCHMARK, else "none" or the benchmarks forgotten
        if not env:
            assert forgotten == "-", row
        else:
            known = {"pubmedqa", "medqa", "medmcqa"}
            assert forgotten == "none" or all(n in known or n.startswith("mmlu_") for n in forgotten.split(", ")), row
    assert "| bad | failed: see" in out
    assert out.splitlines()[-1].startswith("chosen: none"), out
    assert (tmp_path / "sweep" / "b" / "eval" / "metrics.json").is_file()
    assert "lora_targets:\n  - c_attn\n  - c_fc\n" in (tmp_path / "sweep" / "b" / "config.yaml").read_text()
    if env:
        assert json.loads((tmp_path / "sweep" / "b" / "eval" / "metrics.json").read_text())["benchmarks"]


def test_ddp_gpu_syntax_and_dry_run(tmp_path):
    ddp = BENCH / "ddp_gpu.sh"
    run(["bash", "-n", str(ddp)], tmp_path)
    out = run(["bash", str(ddp), str(TINY_TOKENIZER), str(SAMPLE)], tmp_path, DRY_RUN="1", OUT=str(tmp_path / "ddp"))
    would = [ln for ln in out.splitlines() if "would run:" in ln]
    assert len(would) == 2 and "CUDA_VISIBLE_DEVICES=0 " in would[0] and "--nproc-per-node=2 -m medtune" in would[1]
    assert "train.batch_size=16" in would[0] and "train.batch_size=8" in would[1]  # the same global batch
    assert not (tmp_path / "ddp" / "gpus-1").exists()  # nothing ran
    p = subprocess.run(
        ["bash", str(ddp), str(TINY_TOKENIZER), str(SAMPLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1", "GPUS": "3", "OUT": str(tmp_path / "ddp")},
        check=False,
    )
    assert p.returncode == 2 and "does not split over 3 GPUs" in p.stderr


def test_the_trl_anchor_finds_data_passed_with_data_and_tokenizer(tmp_path, monkeypatch):
    """anchor_baselines.py reads ../data/ beside its own folder; throughput.py lays out a copy with links to --data
    and --tokenizer when they are elsewhere (on the GPU run, the TRL row had failed: tokenizer not found)."""
    import argparse

    monkeypatch.syspath_prepend(str(BENCH))
    import throughput

    anchor = tmp_path / "elsewhere" / "anchor_baselines.py"
    anchor.parent.mkdir()
    anchor.write_text(
        "import json, os, sys\n"
        "data = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'data')\n"
        "tok = os.listdir(os.path.join(data, 'gpt2_tokenizer'))\n"
        "rows = json.load(open(os.path.join(data, 'wikidoc_patient_information', "
        "'wikidoc_patient_information.json')))\n"
        "print('RESULT ' + json.dumps({'mode': sys.argv[1], 'size': sys.argv[2], 'rows': len(rows), 'tok': tok}))\n"
    )
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    (tmp_path / "wd.json").write_text(json.dumps([{"input": "q", "output": "a"}] * 3))
    args = argparse.Namespace(anchor=str(anchor), tokenizer=str(tmp_path / "tok"), data=str(tmp_path / "wd.json"))
    args.anchor_timeout = 60
    assert throughput.run_anchor(args, "trl", "gpt2", 1) == {
        "mode": "trl",
        "size": "gpt2",
        "rows": 3,
        "tok": ["vocab.json"],
    }


def test_throughput_table_shows_the_plan_and_memory_left_from_earlier_rows(monkeypatch):
    """A budget row says what the planner chose and expected (the measured/planned ratio calibrates its memory model);
    a row that started with memory still held by earlier rows in the process says so, since its peak counts it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput

    row = dict(size="gpt2-xl", recipe="qlora+24g", tok_s=30811, peak_gib=19.16, epoch_s=26.0, batch_tokens=16384)
    row.update(attention="medtune_varlen", gradient_checkpointing=True, resident_at_start_gib=0.46)
    row["plan"] = dict(checkpoint_layers=34, planned_peak_gib=21.78)
    quiet = dict(row, recipe="qlora", plan=None, resident_at_start_gib=0.0, gradient_checkpointing=False)
    table = throughput.markdown([row, quiet], "H200").splitlines()
    assert "34 layers ckpt, planned 21.78 GiB, 0.46 GiB held from earlier rows" in table[-2]
    assert "planned" not in table[-1] and "held" not in table[-1]


def test_gpu_suite(tmp_path):
    """The GPU session's suite at toy sizes on the CPU: eval (train, eval twice, the benchmarks on a few questions of
    each shared file when present, merge), serve on the merged run, the recipe sweep and a budgets part; a part that
    cannot run is reported and fails the suite; an unknown part is refused before anything runs."""
    import pandas as pd

    suite = BENCH / "gpu_suite.sh"
    run(["bash", "-n", str(suite)], tmp_path)
    data = tmp_path / "sample.json"  # the budgets part's tutorial row reads a .json list
    data.write_text(json.dumps([json.loads(ln) for ln in SAMPLE.read_text().splitlines()[:64]]))
    env = {"SMOKE": "1", "PYTHON": sys.executable}
    shared = ROOT.parent / "shared" / "data" / "medbench"
    names = ["pubmedqa_pqa_labeled", "medqa_usmle_4opt_test", "medmcqa_validation", "mmlu_medical_test"]
    if all((shared / f"{n}.parquet").is_file() for n in names):  # a few questions of each (each MMLU subject)
        env["MEDBENCH"] = str(tmp_path / "medbench")
        Path(env["MEDBENCH"]).mkdir()
        for n in names:
            rows_ = pd.read_parquet(shared / f"{n}.parquet")
            few = rows_.groupby("subject").head(2) if "subject" in rows_ else rows_.head(3)
            few.to_parquet(Path(env["MEDBENCH"]) / f"{n}.parquet")
    args = ["random:tiny", str(data), str(TINY_TOKENIZER)]
    parts = ["eval", "serve", "sweep", "budgets-gpt2"]
    out = run(["bash", str(suite), *args, str(tmp_path / "s"), *parts], tmp_path, **env)
    assert [ln for ln in out.splitlines() if ln.startswith("## ")] == [f"## {p}: ok" for p in parts], out
    # the sweep's rule chooses none (a random toy model never ends its answers); smoke mode scores its variant on test
    assert re.search(r"^chosen: none", out, re.MULTILINE) and re.search(r"^test, a, \d+ questions: ", out, re.M), out
    assert re.search(r"^eval, 3 questions: seconds \{'load': ", out, re.MULTILINE), out
    assert re.search(r"^generate: \d+ tokens in ", out, re.MULTILINE), out
    assert [r[1] for r in rows(out, "2")] == ["thread", "thread"]  # the load table: many clients, then one
    if "MEDBENCH" in env:
        bench = json.loads((tmp_path / "s" / "eval-bench.json").read_text())["benchmarks"]
        assert {"pubmedqa", "medqa", "medmcqa", "mmlu_anatomy"} <= set(bench), sorted(bench)
    cmd = ["bash", str(suite), *args, str(tmp_path / "empty")]
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([*cmd, "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1 and "## serve: failed, see" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([*cmd, "decode", "nope"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 2 and "unknown part nope" in p.stderr and not (tmp_path / "empty" / "decode.log").exists()


def test_a_budget_that_does_not_fit_is_a_row_of_the_table(monkeypatch):
    """gpt2-xl bf16 LoRA in 4 GiB: the planner refuses, and the budget table shows the cell instead of dropping it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import throughput

    rows = [
        dict(name="gpt2-xl-lora+4g", size="gpt2-xl", recipe="lora+4g", tok_s=None, note="does not fit"),
        dict(size="gpt2", recipe="lora", tok_s=1000, peak_gib=1.0, batch_tokens=64, gradient_checkpointing=False),
    ]
    table = throughput.markdown(rows, "card").splitlines()
    assert table[4].startswith("| gpt2-xl | lora+4g | does not fit |")
    assert table[5].startswith("| gpt2 | lora | 1,000 | 1.0 |")


def test_the_sweep_rule_wants_eos_and_no_forgetting_then_low_perplexity_then_the_highest_rouge(tmp_path):
    """sweep_rule.py: a variant that forgets a benchmark or stops fewer than 95% of its answers is never chosen, however
    high its ROUGE-L; among the rest, those at or under 0.52x the base's perplexity come first (all of the rest when
    none is, said so), then the highest ROUGE-L; none passing says so."""
    sys.path.insert(0, str(BENCH))
    import sweep_rule

    def metrics(rouge, eos, forgot=None, ratio=0.5):
        bench = {"pubmedqa": {"forgetting": forgot}} if forgot is not None else {}
        return {
            "tuned": {"rouge_l": rouge, "eos_rate": eos, "perplexity": 10 * ratio},
            "base": {"perplexity": 10.0},
            "benchmarks": bench,
        }

    runs = {
        "forgets": metrics(0.30, 1.0, forgot=True),
        "rambles": metrics(0.29, 0.94),
        "high-ppl": metrics(0.25, 1.0, ratio=0.53),
        "good": metrics(0.22, 0.96, forgot=False),
        "fine": metrics(0.21, 1.0, ratio=0.52),
    }
    assert sweep_rule.choose(runs) == ("good", True)
    assert sweep_rule.choose({k: runs[k] for k in ("forgets", "rambles")}) == (None, False)
    assert sweep_rule.choose({k: runs[k] for k in ("rambles", "high-ppl")}) == ("high-ppl", False)
    for name, m in runs.items():
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "metrics.json").write_text(json.dumps(m))
    assert script("sweep_rule.py", tmp_path, "forgets", "fine", "missing", tmp_path=tmp_path).strip() == "chosen: fine"
    out = script("sweep_rule.py", tmp_path, "high-ppl", tmp_path=tmp_path).strip().splitlines()
    assert out[-1] == "chosen: high-ppl" and "perplexity <= 0.52x" in out[0]
