"""`train.py` as a user runs it: command-line overrides, multirun sweeps with their report,
parallel jobs, and a sweep killed mid-stage and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from w2s_lightning.pipeline import run

from .helpers import ROOT, TINY, compose_cfg


def train_cmd(tmp_path: Path, *overrides: str, multirun: bool = False) -> list[str]:
    tiny = [o for o in TINY if not o.startswith(("weak_model=", "strong_model="))] if multirun else TINY
    return [
        sys.executable,
        str(ROOT / "train.py"),
        *(["-m"] if multirun else []),
        *tiny,
        f"paths.root_dir={tmp_path}",
        *overrides,
    ]


def env() -> dict:
    return {**os.environ, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def results_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]


def test_train_py_runs_one_experiment_with_overrides(tmp_path):
    cmd = train_cmd(tmp_path, "loss=logconf", "seed=3", "hydra.job_logging.root.level=INFO")
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env(), capture_output=True)
    [results] = results_in(tmp_path / "outputs" / "runs")
    assert results["status"] == "done"
    assert (results["loss"], results["seed"], results["strong_model"]) == ("logconf", 3, "tiny_gpt2")


def test_print_config_shows_the_composed_groups(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--cfg", "job", "weak_model=gpt2"],
        check=True,
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
    ).stdout
    assert "pretrained: gpt2" in out and "strong_model:" in out and "_target_: w2s_lightning.losses" in out


def test_bad_input_stops_with_a_message_that_names_the_fix(tmp_path):
    cmd = train_cmd(tmp_path, "dataset=local", f"dataset.path={tmp_path / 'nope.jsonl'}")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "nope.jsonl does not exist; fix: set dataset.path" in proc.stderr


@pytest.mark.slow
def test_sweep_trains_each_model_once_per_seed_and_writes_the_report(tmp_path):
    # The preset's 2 weak x 2 strong x 2 seeds, one loss to keep it short.
    cmd = train_cmd(tmp_path, "experiment=tiny_ladder", "loss=xent", multirun=True)
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env(), capture_output=True)
    [sweep] = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    results = results_in(sweep)
    assert len(results) == 2 * 2 * 2
    skipped = [r for r in results if r["status"] == "skipped"]
    assert {(r["weak_model"], r["strong_model"]) for r in skipped} == {("tiny_gpt2", "tiny_gpt2")}
    trained = {
        stage: sum(not r[stage]["cached"] for r in results if r["status"] == "done")
        for stage in ("weak", "ceiling", "student")
    }
    # Per seed: two weak models and two strong ceilings, whatever the number of pairs and losses.
    assert trained == {"weak": 2 * 2, "ceiling": 2 * 2, "student": 3 * 2}

    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 8 and (summary["status"] == "skipped").sum() == 2
    report = (sweep / "report.md").read_text()
    assert "xent" in report and "tiny_pythia" in report and "tiny_gpt2" in report
    for figure in ("accuracy_vs_size", "pgr_heatmap"):
        assert (sweep / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (sweep / f"{figure}.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_parallel(tmp_path):
    cmd = train_cmd(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1", multirun=True)
    cmd = [c for c in cmd] + ["weak_model=tiny_bert", "strong_model=tiny_gpt2"]
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env(), capture_output=True)
    results = results_in(tmp_path / "outputs" / "multirun")
    assert sorted(r["seed"] for r in results) == [0, 1]
    assert all(r["status"] == "done" for r in results)


@pytest.mark.slow
def test_two_processes_needing_the_same_stages_train_them_once(tmp_path):
    """Started together: each gets its own run folder, and every stage trains in one of them."""
    procs = [
        subprocess.Popen(
            train_cmd(tmp_path), cwd=tmp_path, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    first, second = results_in(tmp_path / "outputs" / "runs")
    for stage in ("weak", "ceiling", "student"):
        assert first[stage]["cached"] + second[stage]["cached"] == 1, stage
        assert first[stage]["acc"] == second[stage]["acc"]


@pytest.mark.slow
def test_a_run_killed_mid_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    longer_ceiling = ["dataset.n_strong=400"]  # a strong stage long enough to be caught mid-way
    killed = subprocess.Popen(
        train_cmd(tmp_path, *longer_ceiling, f"hydra.run.dir={tmp_path}/killed"),
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cache = tmp_path / ".cache" / "stages"
    deadline = time.time() + 240
    # Kill once the weak stage is finished and the ceiling is being written.
    while not list(cache.glob("ceiling/.*.tmp-*")) and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    assert killed.poll() is None, "the run ended before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert list(cache.glob("weak/*/record.json")), "the finished weak stage was lost"
    assert not list(cache.glob("ceiling/*/record.json")), "a partial stage reads as finished"

    subprocess.run(
        train_cmd(tmp_path, *longer_ceiling, f"hydra.run.dir={tmp_path}/resumed"),
        check=True,
        cwd=tmp_path,
        env=env(),
        capture_output=True,
    )
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert resumed["weak"]["cached"] and not resumed["ceiling"]["cached"]

    fresh = compose_cfg(tmp_path / "fresh", *longer_ceiling)  # same config, empty cache, uninterrupted
    run(fresh)
    uninterrupted = json.loads((Path(fresh.paths.output_dir) / "results.json").read_text())
    for stage in ("weak", "ceiling", "student"):
        assert not uninterrupted[stage]["cached"]
        assert resumed[stage]["acc"] == uninterrupted[stage]["acc"]
        assert resumed[stage]["auroc"] == pytest.approx(uninterrupted[stage]["auroc"], abs=1e-12)
    assert resumed["pgr"] == uninterrupted["pgr"]


def test_a_diverged_run_exits_non_zero_with_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run(
        train_cmd(tmp_path, "strong_model.lr=1e6"), cwd=tmp_path, env=env(), capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "error: stage ceiling: the training loss of tiny_gpt2 is nan" in proc.stderr
    assert "Traceback" not in proc.stderr
    [results] = results_in(tmp_path / "outputs" / "runs")
    assert results["status"] == "failed" and results["failed_stage"] == "ceiling"


@pytest.mark.slow
def test_a_sweep_over_a_loss_parameter_reports_one_row_per_value(tmp_path):
    models = ["weak_model=tiny_bert", "strong_model=tiny_gpt2"]
    cmd = train_cmd(tmp_path, *models, "loss=logconf", "loss.aux_coef=0.25,0.75", multirun=True)
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env(), capture_output=True)
    [sweep] = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    results = results_in(sweep)
    assert sorted(r["loss"] for r in results) == ["logconf", "logconf(aux_coef=0.25)"]
    assert sum(not r["weak"]["cached"] for r in results) == 1 and sum(not r["ceiling"]["cached"] for r in results) == 1
    rows = pd.read_csv(sweep / "summary.csv").groupby("loss").size()
    assert rows.to_dict() == {"logconf": 1, "logconf(aux_coef=0.25)": 1}
    report = (sweep / "report.md").read_text()
    assert "logconf(aux_coef=0.25)" in report


@pytest.mark.slow
def test_a_sweep_over_methods_ranks_them_with_the_oracle_apart(tmp_path):
    methods = "naive,logconf,bootstrap,knn,logreg,confidence,weak_val,ensemble,oracle_val,zero_shot"
    cmd = train_cmd(tmp_path, "weak_model=tiny_bert", "strong_model=tiny_gpt2", f"method={methods}", multirun=True)
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env(), capture_output=True)
    [sweep] = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    results = results_in(sweep)
    assert {r["status"] for r in results} == {"done"} and len(results) == 10
    assert {r["method"] for r in results} >= {"weak", "ensemble", "zero_shot", "weak+knn", "weak+oracle_val"}
    assert sum(r["oracle"] for r in results) == 1
    # Shared stages train once: one weak supervisor and one ceiling serve every method that uses them.
    assert sum(not r["ceiling"]["cached"] for r in results) == 1
    ranking = (sweep / "report.md").read_text().split("## Methods ranked by median PGR")[1].split("\n## ")[0]
    assert ranking.count("| oracle, not ranked |") == 1 and "weak+oracle_val" in ranking
