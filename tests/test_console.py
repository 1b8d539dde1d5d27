"""What a run shows: one line per epoch off a terminal, named bars on one, the run folder, the
summary block and the sweep's table; the known third-party chatter only with verbose=true."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import ROOT, TINY
from tests.test_report import write_fake_sweep
from w2s_lightning import console, progress, report

STAGES = ("weak", "ceiling", "student")
# What a default run printed before: Lightning's info lines and tips, a torch deprecation repeated
# per fit and prediction, W&B's banners and summaries, transformers' weight-loading bar.
NOISE = (
    "LeafSpec",
    "GPU available",
    "TPU available",
    "💡 Tip",
    "litlogger",
    "Seed set to",
    "`Trainer.fit` stopped",
    "Loading `train_dataloader`",
    "wandb:",
    "Loading weights",
)
EPOCH = r"{stage}\s+epoch 1/1  loss \d\.\d{{3}}  val acc \d\.\d{{3}}  \d+\.\d s"


def train(tmp_path, *overrides: str) -> str:
    """`python train.py` on tiny models, its output captured as a cluster log would be."""
    tiny = [o for o in TINY if not o.startswith("logger=")] + [f"paths.root_dir={tmp_path}"]
    # The test session sets WANDB_SILENT itself; the run must quiet W&B on its own.
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_CONSOLE")}
    proc = subprocess.run(
        [sys.executable, "train.py", *tiny, *overrides], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("logger", ["none", "csv"])
def test_a_logged_run_shows_epochs_folder_and_summary_and_no_chatter(tmp_path, logger):
    out = train(tmp_path, f"logger={logger}")
    lines = out.splitlines()
    folder = next(line for line in lines if line.startswith("run folder: ")).removeprefix("run folder: ")
    assert (tmp_path / "outputs" / "runs").exists() and os.path.isdir(folder)
    for stage in STAGES:
        assert any(re.fullmatch(EPOCH.format(stage=stage), line) for line in lines), stage
        assert any(re.fullmatch(rf"{stage}\s+test acc \d\.\d{{3}}  auroc \d\.\d{{3}}  trained in .*", x) for x in lines)
    assert any(line.startswith("== done in ") for line in lines)
    assert f"results  {folder}/results.json" in lines
    assert any(line.startswith("PGR ") for line in lines)
    assert "\r" not in out  # no bar redraws in a log file
    assert [noise for noise in NOISE if noise in out] == []


def test_verbose_shows_the_library_lines_again_once_each(tmp_path):
    out = train(tmp_path, "logger=none", "verbose=true")
    assert "Seed set to" in out and "GPU available" in out and "`Trainer.fit` stopped" in out
    # Once per fit: Lightning's own stderr handler no longer doubles Hydra's.
    fits = sum(bool(re.fullmatch(EPOCH.format(stage=s), line)) for s in STAGES for line in out.splitlines())
    assert out.count("GPU available") == fits == 3


class Toy(L.LightningModule):
    """Logs what ClassifierSystem logs, under the stage name `ceiling`."""

    def __init__(self, predict_features: bool = False):
        super().__init__()
        self.layer, self.predict_features = torch.nn.Linear(2, 1), predict_features

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("ceiling/train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("ceiling/val/acc", 0.75)

    def predict_step(self, batch, batch_idx):
        return self.layer(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_and_predict(callback, predict_features: bool = False) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    model = Toy(predict_features)
    trainer.fit(model, loader, loader)
    trainer.predict(model, loader)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_terminal_decides_bar_or_lines(monkeypatch):
    cfg = OmegaConf.create({"trainer": {"enable_progress_bar": True}})
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert console.interactive()
    assert [type(c) for c in progress.stage_callbacks(cfg, "weak")] == [progress.StageBar]
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not console.interactive()
    assert [type(c) for c in progress.stage_callbacks(cfg, "weak")] == [progress.EpochLines]
    cfg.trainer.enable_progress_bar = False  # Lightning refuses a progress bar callback then
    assert progress.stage_callbacks(cfg, "weak") == []


def test_bars_are_named_by_stage_with_rate_and_time_left(monkeypatch, capsys):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    fit_and_predict(progress.StageBar("ceiling"), predict_features=True)
    shown = screen.getvalue()
    assert "it/s" not in capsys.readouterr().out  # every bar on stderr, none on stdout
    assert "ceiling epoch 2/2" in shown and "it/s" in shown and "<00:00" in shown
    assert "val acc=0.75" in shown and "ceiling validation" in shown and "ceiling features" in shown
    assert "ceiling sanity check" in shown


def test_lines_give_each_epoch_and_prediction_pass(capsys):
    fit_and_predict(progress.EpochLines("ceiling"))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  loss")[0] for line in lines[:2]] == ["ceiling  epoch 1/2", "ceiling  epoch 2/2"]
    assert all(re.fullmatch(r"ceiling  epoch \d/2  loss \d\.\d{3}  val acc 0\.750  \d+\.\d s", x) for x in lines[:2])
    assert re.fullmatch(r"ceiling  predict   8 examples  \d+\.\d s", lines[2])


def test_epoch_line_format():
    line = console.epoch_line("ceiling", 1, 2, {"loss": 0.51249, "val acc": 0.8006}, 12.34)
    assert line == "ceiling  epoch 1/2  loss 0.512  val acc 0.801  12.3 s"
    assert console.epoch_line("weak", 2, 2, {}, 0.04) == "weak     epoch 2/2  0.0 s"
    metrics = {"weak/train/loss": torch.tensor(0.25), "weak/val/acc": torch.tensor(0.5), "ceiling/val/acc": 1.0}
    assert console.stage_metrics(metrics, "weak") == {"loss": 0.25, "val acc": 0.5}


def result(status: str, **extra) -> dict:
    who = {"weak_model": "tiny_bert", "strong_model": "tiny_gpt2", "dataset": "sciq", "loss": "xent", "seed": 1}
    return {**who, "status": status, **extra}


def test_summary_block_for_done_failed_and_skipped_runs():
    stage = {"acc": 0.8, "auroc": 0.9, "cached": False, "train_seconds": 3.04, "cache_path": "/c"}
    done = result("done", weak=stage, ceiling={**stage, "cached": True}, student={**stage, "acc": None}, pgr=None)
    assert console.summary_lines(done, "out/results.json", 41.23) == [
        "== done in 41.2 s: tiny_bert -> tiny_gpt2, sciq, loss xent, seed 1",
        "weak     test acc 0.800  auroc 0.900  trained in 3.0 s",
        "ceiling  test acc 0.800  auroc 0.900  from the cache (trained in 3.0 s earlier)",
        "student  test acc n/a  auroc 0.900  trained in 3.0 s",
        "PGR      undefined: the ceiling does not beat weak",
        "results  out/results.json",
    ]
    failed = console.summary_lines(result("failed", failed_stage="ceiling", error="boom"), "r.json")
    assert failed[1:] == ["failed   in stage ceiling (the error is above)", "results  r.json"]
    assert console.summary_lines(result("skipped", reason="not larger"), "r.json")[1] == "skipped  not larger"
    assert console.summary_lines(result("running"), "r.json")[0].startswith("== interrupted: ")


def test_weight_loading_bar_is_hidden_and_downloads_keep_theirs():
    def factory(*args, **kwargs):
        return kwargs

    assert console.hide_weight_loading(factory, (), {"desc": "Loading weights"})["disable"] is True
    assert "disable" not in console.hide_weight_loading(factory, (), {"desc": "model.safetensors"})


def test_a_sweep_prints_its_folder_and_median_table(tmp_path, capsys):
    sweep_dir = write_fake_sweep(tmp_path / "sweep")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}, "logger": None})
    report.ReportCallback().on_multirun_start(config)
    report.ReportCallback().on_multirun_end(config)
    out = capsys.readouterr().out
    assert out.startswith(f"sweep folder: {sweep_dir}\n")
    assert "| dataset | loss |" in out and "median PGR, per seed" in out and "| sciq | xent |" in out
    assert out.rstrip().endswith(f"sweep folder: {sweep_dir}  (report: report.md)")
