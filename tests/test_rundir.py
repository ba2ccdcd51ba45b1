"""medtune.rundir, the run-folder contract: the names of what a run and a merged folder hold, open_run on a run, a
merged folder and a folder that is neither (one clear error each), and the models of one run that
medtune.model.load_model gives computing the same logits whichever way the adapter is applied. (Locks:
tests/test_lock.py; checkpoints and --resume: tests/test_faults.py.)"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from medtune import rundir
from medtune.errors import MedtuneError
from medtune.model import load_model


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run()


@pytest.fixture(scope="module")
def merged(run_dir, tmp_path_factory):
    from medtune.merge import merge

    return merge(run_dir, tmp_path_factory.mktemp("rundir") / "merged")


def prompt_ids(tok, cfg):
    from medtune.generate import prompt_for

    return tok(prompt_for("What is asthma?", cfg.data), return_tensors="pt", add_special_tokens=False)["input_ids"]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_a_run_folder_holds_the_named_files(run_dir):
    for name in (*rundir.RUN_FILES, rundir.METRICS, rundir.LOSS_CURVE, rundir.BASE_MODEL):  # (logs/: TensorBoard only)
        assert (run_dir / name).exists(), name
    run = rundir.open_run(run_dir)
    assert run.kind == "run" and run.is_run and run.base_model == run_dir / rundir.BASE_MODEL
    for split in rundir.SPLIT_NAMES:
        assert run.split_file(split) == rundir.split_path(run_dir, split) == run_dir / rundir.SPLITS / f"{split}.jsonl"
        assert run.split_file(split).is_file()
    assert run.eval_dir == run_dir / rundir.EVAL
    assert run.read_json(rundir.METRICS, required=True)["final"]["train_tokens"] > 0
    assert run.read_json(rundir.REPORT) is None  # a missing optional file is None


def test_a_merged_folder_holds_the_named_files(run_dir, merged):
    run = rundir.open_run(merged)
    assert run.kind == "merged" and not run.is_run and run.base_model is None
    assert run.config == rundir.open_run(run_dir).config
    for name in (rundir.MODEL_CONFIG, rundir.GENERATION_CONFIG, rundir.TOKENIZER_CONFIG, rundir.MODEL_CARD):
        assert (merged / name).is_file(), name
    for src, name in rundir.MERGED_COPIES:  # copied where the run has them (this run was never evaluated)
        assert (merged / name).is_file() == (run_dir / src).is_file(), name
    assert not (merged / rundir.ADAPTER_CONFIG).exists() and not (merged / rundir.ADAPTER_WEIGHTS).exists()
    assert (merged / rundir.MODEL_CARD).read_text().startswith("---\n")  # the model card, front matter first


def test_open_run_refuses_what_is_not_a_run_in_one_line(run_dir, merged, tmp_path):
    def refused(path, want="any"):
        with pytest.raises(MedtuneError) as e:
            rundir.open_run(path, want)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert refused(tmp_path) == (
        f"{tmp_path} holds neither an adapter ({rundir.ADAPTER_CONFIG}) nor a model ({rundir.MODEL_CONFIG}); "
        "give a `medtune train` output folder or a merged model folder"
    )
    assert refused(tmp_path / "missing") == f"folder not found: {tmp_path / 'missing'}"
    (tmp_path / "file").write_text("x")
    assert refused(tmp_path / "file") == f"not a folder: {tmp_path / 'file'}"
    assert "is a full model" in refused(merged, want="run")
    assert "is a training run (adapter)" in refused(run_dir, want="merged")
    assert rundir.open_run(run_dir, want="run").kind == "run" and rundir.open_run(merged, want="merged")

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken, ignore=shutil.ignore_patterns(rundir.CHECKPOINTS, rundir.BASE_MODEL))
    (broken / rundir.ADAPTER_WEIGHTS).write_bytes(b"")
    assert refused(broken).startswith(f"{broken / rundir.ADAPTER_WEIGHTS} is empty")
    (broken / rundir.ADAPTER_WEIGHTS).unlink()
    assert refused(broken) == f"{broken} has {rundir.ADAPTER_CONFIG} but no {rundir.ADAPTER_WEIGHTS}"
    shutil.copyfile(run_dir / rundir.ADAPTER_WEIGHTS, broken / rundir.ADAPTER_WEIGHTS)
    (broken / rundir.CONFIG).write_text("model: [unclosed\n")
    assert "is not valid YAML" in refused(broken)
    (broken / rundir.CONFIG).unlink()
    assert rundir.CONFIG in refused(broken)


def test_merged_folder_without_medtune_config_gets_the_default_config(merged, tmp_path):
    from medtune.config import Config

    plain = tmp_path / "plain"
    shutil.copytree(merged, plain)
    (plain / rundir.CONFIG).unlink()
    assert rundir.open_run(plain).config == Config()


def test_read_json_errors(tmp_path):
    f = tmp_path / rundir.METRICS
    assert rundir.read_json(f) is None
    with pytest.raises(MedtuneError, match="not found"):
        rundir.read_json(f, required=True)
    f.write_text("")
    with pytest.raises(MedtuneError, match="is empty or corrupt"):
        rundir.read_json(f)
    f.write_text(json.dumps([1, 2]))
    with pytest.raises(MedtuneError, match="expected a JSON object"):
        rundir.read_json(f)


def test_load_model_adapter_merged_and_merged_folder_compute_the_same_logits(run_dir, merged):
    run = rundir.open_run(run_dir)
    peft, tok = load_model(run, device="cpu")
    assert type(peft).__name__.startswith("Peft")
    ids = prompt_ids(tok, run.config)
    want = logits(peft, ids)

    folded, _ = load_model(run, device="cpu", merge=True)
    assert not type(folded).__name__.startswith("Peft")  # the adapter folded into the weights
    torch.testing.assert_close(logits(folded, ids), want, atol=1e-4, rtol=1e-4)

    from_folder, _ = load_model(rundir.open_run(merged), device="cpu")
    torch.testing.assert_close(logits(from_folder, ids), want, atol=1e-4, rtol=1e-4)

    wide, _ = load_model(run, device="cpu", float32=True)  # what `medtune merge` folds the adapter into
    assert all(p.dtype == torch.float32 for p in wide.parameters())
    torch.testing.assert_close(logits(wide, ids), want, atol=1e-4, rtol=1e-4)

    base, _ = load_model(run, device="cpu", adapter=False)
    assert not any("lora" in n for n, _ in base.named_parameters())
    assert (logits(base, ids) - want).abs().max() > 1e-3  # the adapter does change something


def test_checkpoint_and_lock_names(tmp_path):
    ckpt = rundir.checkpoint_path(tmp_path, 12)
    assert ckpt.parent == tmp_path / rundir.CHECKPOINTS and rundir.CHECKPOINT.match(ckpt.name).group(1) == "12"
    ckpt.mkdir(parents=True)
    assert rundir.checkpoints(tmp_path) == [(12, ckpt)] and rundir.holds_run(tmp_path)
    assert rundir.checkpoint_problem(ckpt) == "rng_state.pth missing"
    assert rundir.lock_beside(tmp_path / "model.gguf") == tmp_path / f".model.gguf{rundir.LOCK}"


def test_clean_staging_removes_only_staging_folders(tmp_path):
    from medtune.files import staging_dir

    stage = staging_dir(tmp_path)
    (stage / "x").write_text("partial")
    (tmp_path / rundir.SPLITS).mkdir()
    rundir.clean_staging(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [rundir.SPLITS]
