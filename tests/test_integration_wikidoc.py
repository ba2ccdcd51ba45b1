"""Tiny GPT-2 + the real GPT-2 tokenizer on a slice of the real WikiDoc data: validation loss must fall."""

import json

import pytest

from medtune import training


def test_validation_loss_falls_on_real_data(tmp_path, shared, tiny_config):
    data = shared / "wikidoc_patient_information" / "wikidoc_patient_information.json"
    tokenizer = shared / "gpt2_tokenizer"
    if not (data.is_file() and tokenizer.is_dir()):
        pytest.skip("../shared/data not present")
    out = tmp_path / "wd"
    cfg = tiny_config(
        out,
        f"model.tokenizer={tokenizer}",
        "data.max_records=400",
        "data.max_length=256",
        "train.max_steps=30",
        "train.eval_steps=10",
        "train.save_steps=30",
        "train.batch_size=8",
        "train.learning_rate=0.01",
        "train.eval_on_start=true",
        data__source=str(data),
    )
    training.run(cfg)
    hist = json.loads((out / "metrics.json").read_text())["log_history"]
    steps, evals = zip(*[(h["step"], h["eval_loss"]) for h in hist if "eval_loss" in h])
    assert steps[0] == 0 and len(evals) >= 4, steps  # the untrained adapter's loss starts the curve
    assert evals[-1] < evals[0] - 0.3, evals
    assert evals[-1] <= min(evals[1:]) + 0.01, evals  # still falling or flat at the end, not diverging
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["source_rows"] == 5942
