"""The sweep report never pools unlike runs: swept settings become columns, both median
aggregations match a hand computation, and jobs that did not finish are listed and kept out."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.test_report import ACC, PNG_MAGIC, SEEDS, fake_result, write_fake_sweep
from w2s_lightning import report
from w2s_lightning.report.tables import MEDIAN_COLUMNS

PAIRS = (("tiny", "small"), ("tiny", "big"))
LR = {"tiny": 1e-3, "small": 1e-4, "big": 1e-5}  # each model's catalogue lr


def new_style(weak: str, strong: str, seed: int, loss: str = "xent", label: str | None = None, **config) -> dict:
    """A results.json as the pipeline now writes it: the loss label, and the flattened config."""
    record = fake_result(weak, strong, loss, seed)
    base = {
        "seed": seed,
        "name": "w2s",
        "train.epochs": 2,
        "loss.name": loss,
        "weak_model.name": weak,
        "weak_model.lr": LR[weak],
        "strong_model.name": strong,
        "strong_model.lr": LR[strong],
        "dataset.name": "sciq",
        "dataset.n_strong": 100,
        "trainer.devices": "auto",
    }
    return {**record, "loss": label or loss, "loss_name": loss, "config": {**base, **config}}


def write_job(root: Path, name: str, record: dict | None, overrides: tuple[str, ...] = ()) -> Path:
    """A Hydra job folder; without a record it is a job killed before writing results.json."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if record is not None:
        (job / "results.json").write_text(json.dumps(record))
    return job


def write_sweep(root: Path, variants: dict[str, dict]) -> Path:
    """Every pair and seed once per variant (keyword arguments of `new_style`)."""
    for tag, variant in variants.items():
        for weak, strong in PAIRS:
            for seed in SEEDS:
                write_job(root, f"{tag}_{weak}-{strong}_s{seed}", new_style(weak, strong, seed, **variant))
    return root


def test_loss_parameters_give_one_row_per_label(tmp_path, caplog):
    labels = {coef: f"logconf(aux_coef={coef})" for coef in (0.5, 0.75)}
    variants = {
        f"c{coef}": {"loss": "logconf", "label": label, "loss.aux_coef": coef} for coef, label in labels.items()
    }
    with caplog.at_level(logging.WARNING):
        frame = report.collect(write_sweep(tmp_path, variants))
    assert "pools them" not in caplog.text
    medians = report.median_pgr_table(frame)
    assert list(medians.columns) == ["dataset", "loss", "method", *MEDIAN_COLUMNS]  # aux_coef follows from the label
    assert sorted(medians["loss"]) == sorted(labels.values())
    assert (medians["runs"] == 4).all()
    assert (frame["loss_name"] == "logconf").all()


@pytest.mark.parametrize(
    ("key", "values"),
    [("train.epochs", (1, 2)), ("dataset.n_strong", (100, 200)), ("weak_model.lr", (1e-3, 1e-2))],
)
def test_a_swept_setting_becomes_a_column(tmp_path, key, values):
    sweep_dir = write_sweep(tmp_path, {f"v{value}": {key: value} for value in values})
    written = report.write_report(sweep_dir)
    medians = report.median_pgr_table(report.collect(sweep_dir))
    assert list(medians.columns) == ["dataset", "loss", "method", key, *MEDIAN_COLUMNS]
    assert list(medians[key]) == list(values) and (medians["runs"] == 3).all()
    summary = pd.read_csv(written["summary"])
    assert sorted(summary[key].unique()) == sorted(values)
    assert "strong_model.lr" not in summary.columns  # differs between models only: follows from them
    text = written["report"].read_text()
    assert f"besides models, loss and seed (a column each): {key}." in text
    for value in values:
        assert f"| sciq | xent | weak | {value} | 0.600 |" in text
        assert f"| sciq | tiny | big | xent | weak | {value} | 2 |" in text
        figure = written[f"pgr_heatmap_{key}_{value}"]
        assert figure.read_bytes()[:8] == PNG_MAGIC


def test_two_aggregations_match_hand_computation(tmp_path):
    medians = report.median_pgr_table(report.collect(write_fake_sweep(tmp_path))).set_index("loss")
    # xent, per seed: tiny -> small seed 1 has ceiling 0.60 < weak 0.62 and drops out.
    per_run = [(0.66 - 0.60) / (0.70 - 0.60), (0.75 - 0.60) / (0.80 - 0.60), (0.72 - 0.62) / (0.82 - 0.62)]
    assert medians.loc["xent", "median_pgr"] == pytest.approx(statistics.median(per_run)) == pytest.approx(0.6)
    # Seed-mean accuracies: weak tiny 0.61, ceiling small 0.65 and big 0.81; every run counts.
    weak, ceiling = 0.61, {"small": 0.65, "big": 0.81}
    by_means = [(ACC["tiny", s, "xent", seed][1] - weak) / (ceiling[s] - weak) for _, s in PAIRS for seed in SEEDS]
    assert sorted(by_means) == pytest.approx([0.0, 0.55, 0.7, 1.25])
    assert medians.loc["xent", "median_pgr_mean_acc"] == pytest.approx(0.625)
    assert medians.loc["xent", "runs_mean_acc"] == 4 and medians.loc["xent", "runs"] == 3
    assert medians.loc["logconf", "median_pgr"] == pytest.approx(0.9)
    assert medians.loc["logconf", "median_pgr_mean_acc"] == pytest.approx((0.8 + 0.85) / 2)


def started(weak: str, strong: str, seed: int) -> dict:
    """What a job records when it starts: who it is, and its config."""
    record = fake_result(weak, strong, "xent", seed)  # no accuracies for these seeds: a bare identity
    return {k: v for k, v in record.items() if k not in ("status", "reason")} | {"config": {"seed": seed}}


def write_broken_jobs(root: Path) -> None:
    """A job that failed in the student stage (its weak and ceiling accuracies are recorded and
    absurd, so counting them would show), one killed while running, one killed before results.json."""
    failed = {**started("tiny", "big", 2), "status": "failed", "failed_stage": "student"}
    failed.update(error="RuntimeError: CUDA out of memory", weak={"acc": 0.0}, ceiling={"acc": 1.0}, pgr=None)
    write_job(root, "90_failed", failed)
    write_job(root, "91_running", {**started("tiny", "small", 3), "status": "running"})
    write_job(root, "92_killed", None, ("weak_model=tiny", "strong_model=big", "seed=4"))


def test_unfinished_jobs_are_listed_and_never_counted(tmp_path):
    sweep_dir = write_fake_sweep(tmp_path)
    before = report.median_pgr_table(report.collect(sweep_dir))
    write_broken_jobs(sweep_dir)
    written = report.write_report(sweep_dir)
    frame = report.collect(sweep_dir)
    assert sorted(report.unfinished(frame)["status"]) == ["failed", "missing", "running"]
    after = report.median_pgr_table(frame)
    for column in ("median_pgr", "median_pgr_mean_acc", "runs", "runs_mean_acc"):
        assert list(after[column]) == pytest.approx(list(before[column]))
    assert list(after.set_index("loss")["excluded_unfinished"].sort_index()) == [0, 2]
    summary = pd.read_csv(written["summary"])
    assert summary["status"].value_counts().to_dict() == {
        "done": 12,
        "skipped": 4,
        "failed": 1,
        "running": 1,
        "missing": 1,
    }
    text = written["report"].read_text()
    assert "19 jobs, 12 finished, 4 skipped, 3 did not finish." in text
    section = text.split("## Jobs that did not finish")[1]
    assert (
        "- `90_failed` (tiny → big, loss xent, method weak, seed 2): "
        "failed in stage student: RuntimeError: CUDA out of memory" in section
    )
    assert "- `91_running` (tiny → small, loss xent, method weak, seed 3): still marked running" in section
    assert "- `92_killed` (overrides: weak_model=tiny strong_model=big seed=4): no results.json" in section


def test_callback_exits_non_zero_when_a_job_did_not_finish(tmp_path, caplog):
    sweep_dir = write_fake_sweep(tmp_path)
    write_broken_jobs(sweep_dir)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "logger": None})
    with caplog.at_level(logging.ERROR, logger=report.__name__), pytest.raises(SystemExit) as exit_info:
        report.ReportCallback().on_multirun_end(config)
    assert exit_info.value.code == 1
    assert f"3 of 19 jobs did not finish: see {sweep_dir / 'report.md'}" in caplog.text
    assert (sweep_dir / "report.md").is_file() and (sweep_dir / "summary.csv").is_file()


def test_old_results_without_config_still_report(tmp_path):
    frame = report.collect(write_fake_sweep(tmp_path))
    assert not [c for c in frame.columns if c.startswith("config.")]
    medians = report.median_pgr_table(frame)
    assert list(medians.columns) == ["dataset", "loss", "method", *MEDIAN_COLUMNS]
    assert set(medians["loss"]) == {"xent", "logconf"}


def test_wandb_run_carries_swept_settings_of_mixed_types(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env"))
    sweep_dir = write_sweep(tmp_path / "sweep", {"auto": {"trainer.devices": "auto"}, "one": {"trainer.devices": 1}})
    cfg = {"project": "w2s-test", "offline": True, "save_dir": str(tmp_path / "save")}
    written = report.write_report(sweep_dir, cfg)
    run_dir = written["wandb"]
    [table] = (run_dir / "files" / "media" / "table").glob("median_pgr_*.table.json")
    table = json.loads(table.read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert sorted(str(r["trainer.devices"]) for r in rows) == ["1", "auto"]
    assert [r["median_pgr_mean_acc"] for r in rows] == pytest.approx([0.625, 0.625])
    for devices in ("auto", 1):
        assert written[f"accuracy_vs_size_trainer.devices_{devices}"].is_file()
