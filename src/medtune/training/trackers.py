"""Experiment trackers (train.report_to). transformers' integrations log the curves (loss, eval_loss, learning rate)
and the Trainer's arguments; medtune adds its own config when training starts and the final metrics (metrics.json's
numbers, as final/<name>) when it ends, and checks before anything is written that each tracker's package is
installed. MLflow's run is opened and closed here, not by transformers' callback: that one ends the run when training
ends, and the evaluation after it would then open a second run."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from transformers import TrainerCallback

from medtune import rundir
from medtune.config import Config, dump_yaml, to_dict
from medtune.errors import MedtuneError

PACKAGES = {  # tracker -> what it imports: (module, pip package)
    "tensorboard": [("tensorboard", "tensorboard")],
    "wandb": [("wandb", "wandb")],
    "mlflow": [("mlflow", "mlflow")],
    "comet_ml": [("comet_ml", "comet-ml")],
    "trackio": [("trackio", "trackio")],
    "clearml": [("clearml", "clearml")],
    "dvclive": [("dvclive", "dvclive")],
    "neptune": [("neptune", "neptune")],
    "swanlab": [("swanlab", "swanlab")],
    "codecarbon": [("codecarbon", "codecarbon")],
    "azure_ml": [("azureml", "azureml-core")],
    "dagshub": [("dagshub", "dagshub"), ("mlflow", "mlflow")],
    "flyte": [("flytekit", "flytekit")],
}


def trackers(cfg: Config) -> list[str]:
    """train.report_to without 'none': what the Trainer reports to."""
    return [t for t in cfg.train.report_to if t != "none"]


def check(cfg: Config, main_process: bool = True) -> None:
    """Each tracker's package is installed (else one line naming the pip package); MLflow's tracking store opens."""
    for name in trackers(cfg):
        for module, package in PACKAGES[name]:
            if importlib.util.find_spec(module) is None:
                raise MedtuneError(
                    f"train.report_to={name} needs the '{package}' package: pip install {package} "
                    "(or leave it out of train.report_to)"
                )
    if "mlflow" in trackers(cfg) and main_process:
        _check_mlflow_store()


def _check_mlflow_store() -> None:
    """A local store (file:, sqlite:, a path) must open now, not after the run's first files are written. MLflow 3
    refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true; its default, sqlite, needs the full mlflow package."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if "://" in uri and not uri.startswith(("file:", "sqlite:")):
        return  # a tracking server: reached when training starts
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        hint = (
            "set MLFLOW_ALLOW_FILE_STORE=true to use it, or a database URI"
            if "MLFLOW_ALLOW_FILE_STORE" in msg
            else "set MLFLOW_TRACKING_URI (e.g. file:./mlruns with MLFLOW_ALLOW_FILE_STORE=true)"
        )
        raise MedtuneError(
            f"train.report_to=mlflow: cannot open the MLflow tracking store {uri} "
            f"({type(e).__name__}: {msg[:100]}); {hint}"
        ) from None


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def start(cfg: Config, out: Path) -> None:
    """Before training, on the main process: open the MLflow run (named after the output folder; MLFLOW_RUN_ID
    continues a run) and log the config: every key as a `medtune.<key>` parameter, and config.yaml."""
    if "mlflow" not in trackers(cfg):
        return
    import mlflow

    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # taken here, or transformers' callback would start it again
    mlflow.start_run(run_id=run_id, run_name=None if run_id else Path(out).name)
    params = {f"medtune.{k}": str(v)[:6000] for k, v in _flat(to_dict(cfg)).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
        mlflow.log_params(dict(items[i : i + 100]))
    mlflow.log_text(dump_yaml(cfg), rundir.CONFIG)  # named as in the run folder


def finish(cfg: Config, metrics: dict) -> None:
    """After training, on the main process: the final metrics as final/<name> into MLflow's and wandb's runs, which
    are then closed."""
    numbers = {
        f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    names = trackers(cfg)
    if "mlflow" in names:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics(numbers)
            mlflow.end_run()
    if "wandb" in names:  # not exercised by the tests (wandb is not a dev dependency)
        import wandb

        if wandb.run is not None:
            wandb.run.summary.update(numbers)
            wandb.finish()


def attach(trainer, cfg: Config, logs: Path) -> None:
    """TensorBoard writes under `logs` (transformers' callback reads TENSORBOARD_LOGGING_DIR when the Trainer is built,
    and would otherwise write under checkpoints/runs/), and the config goes to the trackers when training starts."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            cb.logging_dir = str(logs)
    trainer.add_callback(ConfigCallback(cfg, trainer.callback_handler.callbacks))


class ConfigCallback(TrainerCallback):
    """When training starts (after transformers' integrations have set up): the config into wandb's run config and
    into TensorBoard as text. MLflow's is logged by start()."""

    def __init__(self, cfg: Config, callbacks: list):
        self.cfg, self.callbacks = cfg, callbacks

    def on_train_begin(self, args, state, control, **kwargs):
        names = trackers(self.cfg)
        if not state.is_world_process_zero:
            return
        if "wandb" in names:
            import wandb

            if wandb.run is not None:
                wandb.config.update({"medtune": to_dict(self.cfg)}, allow_val_change=True)
        if "tensorboard" in names:
            for cb in self.callbacks:
                if getattr(cb, "tb_writer", None) is not None:
                    cb.tb_writer.add_text("medtune_config", "```yaml\n" + dump_yaml(self.cfg) + "```")
