"""The sweep report on a fake sweep folder: tables, median PGR, figures, CLI, W&B offline, callback."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s_lightning import report
from w2s_lightning.loggers import folder_group

from .helpers import run_identity

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZES = {"tiny": 1e6, "small": 1e7, "big": 1e8}
WEAK, STRONG, SEEDS, LOSSES = ("tiny", "big"), ("small", "big"), (0, 1), ("xent", "logconf")

# (weak, strong, loss, seed) -> test accuracies (weak, student, ceiling). big -> small is skipped
# (strong not larger), big -> big is a self-pair run anyway, and tiny -> small seed 1 under xent
# has a ceiling below the weak model, so its PGR is undefined.
ACC = {
    ("tiny", "small", "xent", 0): (0.60, 0.66, 0.70),
    ("tiny", "small", "xent", 1): (0.62, 0.61, 0.60),
    ("tiny", "big", "xent", 0): (0.60, 0.75, 0.80),
    ("tiny", "big", "xent", 1): (0.62, 0.72, 0.82),
    ("big", "big", "xent", 0): (0.80, 0.81, 0.80),
    ("big", "big", "xent", 1): (0.82, 0.82, 0.82),
    ("tiny", "small", "logconf", 0): (0.60, 0.69, 0.70),
    ("tiny", "small", "logconf", 1): (0.62, 0.64, 0.72),
    ("tiny", "big", "logconf", 0): (0.60, 0.78, 0.80),
    ("tiny", "big", "logconf", 1): (0.62, 0.80, 0.82),
    ("big", "big", "logconf", 0): (0.80, 0.80, 0.80),
    ("big", "big", "logconf", 1): (0.82, 0.83, 0.82),
}
SKIP_REASON = "strong model small is not larger than weak model big"


def metrics(acc: float, key: str) -> dict:
    return {
        "acc": acc,
        "auroc": acc + 0.05,
        "cached": False,
        "key": key,
        "train_seconds": 1.5,
        "cache_path": f"/cache/{key}",
    }


def fake_result(weak: str, strong: str, loss: str, seed: int) -> dict:
    record = run_identity(weak, strong, loss, seed, SIZES, name="w2s")
    if (weak, strong, loss, seed) not in ACC:
        return {**record, "status": "skipped", "reason": SKIP_REASON}
    w, s, c = ACC[weak, strong, loss, seed]
    pgr = (s - w) / (c - w) if c > w else None
    return {
        **record,
        "status": "done",
        "weak_labels": {"acc": w - 0.01, "auroc": w},
        "weak": metrics(w, f"w{seed}"),
        "ceiling": metrics(c, f"c{seed}"),
        "student": {**metrics(s, f"s{seed}"), "agreement": 0.9},
        "pgr": pgr,
        "pgr_auroc": pgr,
    }


def write_fake_sweep(root: Path) -> Path:
    num = 0
    for loss in LOSSES:
        for weak in WEAK:
            for strong in STRONG:
                for seed in SEEDS:
                    job = root / f"{num}_{weak}-{strong}_s{seed}"
                    job.mkdir(parents=True)
                    (job / "results.json").write_text(json.dumps(fake_result(weak, strong, loss, seed)))
                    num += 1
    return root


def hand_pgr(weak: str, strong: str, loss: str, seed: int) -> float:
    w, s, c = ACC[weak, strong, loss, seed]
    return (s - w) / (c - w)


# The runs that should count in the median, written out by hand.
COUNTED = {
    "xent": [("tiny", "small", 0), ("tiny", "big", 0), ("tiny", "big", 1)],
    "logconf": [("tiny", "small", 0), ("tiny", "small", 1), ("tiny", "big", 0), ("tiny", "big", 1)],
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict]:
    sweep_dir = write_fake_sweep(tmp_path_factory.mktemp("sweep"))
    return sweep_dir, report.write_report(sweep_dir)


def test_collect_flattens_every_result(sweep):
    frame = report.collect(sweep[0])
    assert len(frame) == 16
    assert (frame["status"] == "skipped").sum() == 4
    for column in (
        "weak_acc",
        "ceiling_auroc",
        "student_agreement",
        "weak_cached",
        "weak_labels_acc",
        "student_train_seconds",
        "pgr",
        "reason",
        "run_dir",
    ):
        assert column in frame.columns
    skipped = frame[frame["status"] == "skipped"]
    assert set(skipped["reason"]) == {SKIP_REASON}
    assert skipped["weak_acc"].isna().all()


def test_summary_csv_has_one_row_per_run(sweep):
    summary = pd.read_csv(sweep[1]["summary"])
    assert len(summary) == 16
    assert not summary.duplicated(["weak_model", "strong_model", "loss", "seed"]).any()
    for column in (
        "weak_model",
        "strong_model",
        "weak_size",
        "strong_size",
        "loss",
        "seed",
        "status",
        "pgr",
        "weak_acc",
        "student_acc",
        "ceiling_acc",
        "student_agreement",
        "weak_labels_auroc",
    ):
        assert column in summary.columns


def test_median_pgr_matches_hand_computation(sweep):
    medians = report.median_pgr_table(report.collect(sweep[0])).set_index("loss")
    for loss, runs in COUNTED.items():
        values = [hand_pgr(w, s, loss, seed) for w, s, seed in runs]
        per_seed = [statistics.median(hand_pgr(w, s, loss, sd) for w, s, sd in runs if sd == seed) for seed in SEEDS]
        row = medians.loc[loss]
        assert row["median_pgr"] == pytest.approx(statistics.median(values))
        assert row["seed_median_min"] == pytest.approx(min(per_seed))
        assert row["seed_median_max"] == pytest.approx(max(per_seed))
        assert row["runs"] == len(runs)
        assert row["pairs"] == 2
        assert row["excluded_self-pair"] == 2 and row["excluded_skipped"] == 2
    assert medians.loc["xent", "excluded_undefined"] == 1
    assert medians.loc["logconf", "excluded_undefined"] == 0


def test_excluded_runs_stay_out(sweep):
    counted = report.counted_runs(report.collect(sweep[0]))
    assert not (counted["weak_model"] == counted["strong_model"]).any()
    assert (counted["status"] == "done").all() and counted["pgr"].notna().all()
    undefined = counted[
        (counted["weak_model"] == "tiny")
        & (counted["strong_model"] == "small")
        & (counted["loss"] == "xent")
        & (counted["seed"] == 1)
    ]
    assert undefined.empty


def test_report_markdown_lists_tables_and_skips(sweep):
    text = sweep[1]["report"].read_text()
    assert report.SPREAD in text
    xent_median = statistics.median(hand_pgr(w, s, "xent", seed) for w, s, seed in COUNTED["xent"])
    assert f"| sciq | xent | weak | {xent_median:.3f} |" in text
    assert "## Per pair" in text and "| sciq | tiny | big | logconf | weak | 2 |" in text
    assert f"- big → small (loss logconf, xent; seeds 0, 1): {SKIP_REASON}" in text
    assert "ceiling <= weak in 1 seed(s)" in text


def test_pngs_are_written(sweep):
    written = sweep[1]
    for stem in ("accuracy_vs_size", "pgr_heatmap"):  # every loss in one figure
        path = written[stem]
        assert path == sweep[0] / f"{stem}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 10_000
        assert path.with_suffix(".pdf").is_file()


def test_cli_writes_the_files(tmp_path):
    sweep_dir = write_fake_sweep(tmp_path / "sweep")
    done = subprocess.run(
        [sys.executable, "-m", "w2s_lightning.report", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "median PGR" in done.stdout and "| sciq | logconf | weak |" in done.stdout
    for name in ("summary.csv", "report.md", "accuracy_vs_size.png", "pgr_heatmap.pdf"):
        assert (sweep_dir / name).is_file()


def test_wandb_offline_run_lands_in_save_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_env"))
    sweep_dir = write_fake_sweep(tmp_path / "sweep")
    save_dir = tmp_path / "save"
    cfg = OmegaConf.create(
        {
            "_target_": "w2s_lightning.loggers.wandb_logger",
            "_partial_": True,
            "project": "w2s-test",
            "group": "w2s",
            "offline": True,
            "save_dir": str(save_dir),
        }
    )
    written = report.write_report(sweep_dir, cfg)
    run_dir = written["wandb"]
    assert run_dir.parent == save_dir / "wandb" and run_dir.name.startswith("offline-run-")
    assert list(run_dir.glob("*.wandb"))
    assert list((run_dir / "files" / "media" / "images").rglob("*.png"))


def test_wandb_settings_follow_the_logger_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    frame = report.collect(write_fake_sweep(tmp_path / "sweep"))
    # As composed in a multirun: save_dir follows a job folder that cannot be resolved any more.
    cfg = OmegaConf.create({"project": "p", "group": "${name}", "offline": True, "save_dir": "${hydra:runtime.x}"})
    settings = report.wandb_settings(cfg, tmp_path / "sweep", frame)
    assert settings["dir"] == str(tmp_path / "sweep")
    # The default name is no group: the sweep folder is, as for the stage runs.
    assert settings["group"] == folder_group(tmp_path / "sweep")
    assert settings["job_type"] == "report" and settings["mode"] == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert report.wandb_settings(cfg, tmp_path / "sweep", frame)["mode"] is None


def test_callback_writes_report_and_never_raises(tmp_path, monkeypatch, caplog):
    sweep_dir = write_fake_sweep(tmp_path / "sweep")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "logger": None})
    report.ReportCallback().on_multirun_end(config)
    assert (sweep_dir / "report.md").is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    with caplog.at_level(logging.ERROR, logger=report.__name__):
        report.ReportCallback().on_multirun_end(config)
    assert "disk full" in caplog.text and os.fspath(sweep_dir) in caplog.text
