"""train.report_to: an MLflow file-store run (offline) holds the config, the curves and the final metrics, in one run;
TensorBoard gets the config as text; an unknown tracker, 'none' with others, a missing package or a store that cannot
open is one clear error before anything is written."""

from __future__ import annotations

import importlib.util
import json
import typing

import pytest

from medtune import training
from medtune.config import TrainConfig
from medtune.errors import MedtuneError
from medtune.training import trackers
from medtune.validate import load_config


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its file store without this
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path / "mlruns"


def test_mlflow_file_store_run_holds_config_curves_and_final_metrics(tmp_path, tiny_config, mlflow_store):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    # evaluated at steps 0 (the preset's eval_on_start), 3 and 5 (the last)
    cfg = tiny_config(out, "train.max_steps=5", "train.save_steps=100", "train.report_to=mlflow,tensorboard")
    metrics = training.run(cfg)
    client = MlflowClient()
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1, "one MLflow run per training run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["medtune.train.max_steps"] == "5"
    assert run.data.params["medtune.data.source"] == "builtin:sample"
    assert run.data.metrics["final/eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert run.data.metrics["final/train_tokens"] == metrics["train_tokens"]
    evals = client.get_metric_history(run.info.run_id, "eval_loss")
    assert sorted(m.step for m in evals) == [0, 3, 5]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]
    saved = json.loads((out / "metrics.json").read_text())["final"]
    assert saved["eval_loss"] == pytest.approx(run.data.metrics["final/eval_loss"])
    events = EventAccumulator(str(out / "logs")).Reload()
    assert "medtune_config/text_summary" in events.Tags()["tensors"]


def test_report_to_takes_one_tracker_or_a_list(tmp_path):
    def cfg(value):
        return load_config(None, [f"train.report_to={value}"], output_dir=str(tmp_path))

    assert cfg("mlflow").train.report_to == ["mlflow"]
    assert cfg("wandb,mlflow").train.report_to == ["wandb", "mlflow"]
    assert cfg("[tensorboard, trackio]").train.report_to == ["tensorboard", "trackio"]
    assert trackers.trackers(cfg("none")) == []
    with pytest.raises(
        MedtuneError, match=r"'train.report_to' must be one of none, tensorboard, wandb, .*got 'wandbb'"
    ):
        cfg("wandbb")
    with pytest.raises(MedtuneError, match="'none' cannot be combined"):
        cfg("none,mlflow")


def test_every_tracker_is_a_transformers_integration_with_a_package():
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    (tracker,) = typing.get_args(typing.get_type_hints(TrainConfig)["report_to"])
    names = set(typing.get_args(tracker)) - {"none"}
    assert names == set(trackers.PACKAGES) and names <= set(INTEGRATION_TO_CALLBACK)


def test_a_missing_package_is_named(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "comet_ml" else real(name, *a))
    cfg = load_config(None, ["train.report_to=tensorboard,comet_ml"], output_dir=str(tmp_path))
    with pytest.raises(
        MedtuneError,
        match=r"train.report_to=comet_ml needs the 'comet-ml' package: pip install "
        r"comet-ml",
    ):
        trackers.check(cfg)


def test_an_mlflow_store_that_cannot_open_is_refused_before_training(tmp_path, monkeypatch, tiny_config):
    pytest.importorskip("mlflow")
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "a-file" / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with pytest.raises(MedtuneError, match="cannot open the MLflow tracking store file:"):
        training.run(tiny_config(tmp_path / "out", "train.report_to=mlflow"))
    assert not (tmp_path / "out").exists()
