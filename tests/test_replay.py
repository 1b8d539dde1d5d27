"""A fully cached rerun answered from its run record (w2s_lightning/replay.py): it writes what a
cached rerun of the pipeline writes, without torch or Lightning, and steps aside whenever it cannot
vouch for the answer: other data, a damaged or replaced cache entry, force_retrain, a logger, another
config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from w2s_lightning import replay
from w2s_lightning.pipeline import run

from .helpers import ROOT, TINY, compose_cfg

HEAVY = {"torch", "lightning", "pytorch_lightning", "transformers"}
# Not needed either when the record kept the hashes of the files the loader reads (a local file).
DATA_LIBRARIES = {"pandas", "pyarrow"}
SIZES = ["dataset.n_weak=48", "dataset.n_strong=48", "dataset.n_val=16", "dataset.n_test=48"]
OUTPUTS = ("results.json", "splits.json", "weak_labels.parquet")


def write_data(path: Path, edit: int | None = None, repeat: bool = False) -> Path:
    """240 short reviews; `edit` changes one text, `repeat` appends a copy of the first text (the
    duplicate guard drops it: same splits, one more repeat counted)."""
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    rows = [{"text": f"review {i}: the car was {words[i % 6]}", "label": int(i % 6 in (0, 2, 4))} for i in range(240)]
    if edit is not None:
        rows[edit]["text"] += " indeed"
    if repeat:
        rows.append(dict(rows[0]))
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder holding the data and a cache in which one tiny experiment ran (run record included)."""
    folder = tmp_path_factory.mktemp("trained")
    write_data(folder / "data.jsonl")
    run(config(folder, "first"))
    return folder


@pytest.fixture
def home(trained, tmp_path) -> Path:
    """A private copy of `trained`: a test may damage or retrain it."""
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    return tmp_path


def overrides(folder: Path, *extra: str) -> list[str]:
    return ["dataset=local", f"dataset.path={folder / 'data.jsonl'}", *SIZES, *extra]


def config(folder: Path, out: str, *extra: str):
    cfg = compose_cfg(folder, *overrides(folder, *extra))
    cfg.paths.output_dir = str(folder / out)
    return cfg


def why(cfg) -> str | None:
    """Why replay steps aside for `cfg`; None when it answers."""
    try:
        replay.decide(cfg)
    except replay.StepAside as reason:
        return str(reason)
    return None


def outputs(folder: Path) -> tuple:
    results = json.loads((folder / "results.json").read_text())
    return results, (folder / "splits.json").read_bytes(), (folder / "weak_labels.parquet").read_bytes()


def test_replay_writes_what_a_cached_rerun_of_the_pipeline_writes(home):
    score = run(config(home, "pipeline"))  # every stage from the cache, through the pipeline
    replayed = replay.replay(config(home, "replay"))
    assert replayed is not None and replayed.score == score
    pipeline, again = outputs(home / "pipeline"), outputs(home / "replay")
    assert all(pipeline[0][stage]["cached"] for stage in ("weak", "ceiling", "student"))
    assert again == pipeline  # results.json, splits.json and weak_labels.parquet alike


def test_knobs_outside_the_key_still_hit_and_show_in_results(home):
    cfg = config(home, "renamed", "name=other", "verbose=true", "cache.lock=file")
    assert replay.replay(cfg) is not None
    results = json.loads((home / "renamed" / "results.json").read_text())
    assert results["name"] == "other" and results["config"]["verbose"] is True
    assert results["config"]["cache.lock"] == "file"


@pytest.mark.parametrize("change", ["seed=1", "train.epochs=2", "loss=logconf", "strong_model.lr=0.0123"])
def test_another_config_misses(home, change):
    assert why(config(home, "other", change)).startswith("no run record")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("cache.force_retrain=true", "force_retrain"),
        ("cache.enabled=false", "cache.enabled=false"),
        ("logger=csv", "logger"),
    ],
)
def test_force_retrain_a_logger_or_no_cache_step_aside(home, change, reason):
    assert reason in why(config(home, "other", change))


@pytest.mark.parametrize(("edit", "repeat"), [(0, False), (None, True)], ids=["edited_text", "repeated_text"])
def test_other_data_at_the_same_path_steps_aside(home, edit, repeat):
    text_in_b = int(json.loads((home / "first" / "splits.json").read_text())["b"][0].split("-")[1])
    write_data(home / "data.jsonl", edit=text_in_b if edit is not None else None, repeat=repeat)
    reason = why(config(home, "other"))
    assert ("duplicate guard" if repeat else "data differs") in reason


def test_an_edit_that_leaves_the_splits_alone_is_checked_by_rebuilding_them(home):
    """The file's hash changed, so the recorded splits are not taken on trust: they are rebuilt,
    found equal, and the rerun answers with what the pipeline writes."""
    with (home / "data.jsonl").open("a") as f:
        f.write("\n")  # a blank last line: other bytes, the same rows
    record = next(p for p in (home / "cache" / "run").iterdir() if p.is_dir())
    cfg, sources = config(home, "x"), json.loads((record / replay.SOURCES).read_text())
    assert replay.data_digests(cfg) != sources["data_files"]
    assert replay.recorded_splits(cfg, record, sources) is None
    score = run(config(home, "pipeline"))
    assert replay.replay(config(home, "replay")).score == score
    assert outputs(home / "replay") == outputs(home / "pipeline")


def test_a_copy_of_the_data_elsewhere_answers_from_the_recorded_splits(home, tmp_path_factory):
    copy = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(home / "data.jsonl", copy / "data.jsonl")
    cfg = config(home, "moved")
    cfg.dataset.path = str(copy / "data.jsonl")
    record = next(p for p in (home / "cache" / "run").iterdir() if p.is_dir())
    assert replay.recorded_splits(cfg, record, json.loads((record / replay.SOURCES).read_text())) is not None
    assert replay.replay(cfg) is not None
    assert (home / "moved" / "splits.json").read_bytes() == (home / "first" / "splits.json").read_bytes()


def cache_file(home: Path, stage: str, name: str) -> Path:
    [entry] = (home / "cache" / stage).glob("*/" + name)
    return entry


@pytest.mark.parametrize(
    ("stage", "name"), [("student", "test.parquet"), ("weak", "b.parquet"), ("run", "results.json")]
)
def test_a_damaged_entry_steps_aside(home, stage, name):
    file = cache_file(home, stage, name)
    file.write_bytes(file.read_bytes()[:-1] + b"\0")  # same size, other content: only sha256 sees it
    assert "does not match its recorded sha256" in why(config(home, "other"))


def test_a_retrained_entry_steps_aside_and_the_retraining_run_answers_next(home):
    [old_record] = [p for p in (home / "cache" / "run").iterdir() if p.is_dir()]
    kept = shutil.copytree(old_record, home / "old_record")
    forced = run(config(home, "forced", "cache.force_retrain=true"))  # new entries, new record
    assert replay.replay(config(home, "after")).score == forced
    shutil.rmtree(old_record)
    shutil.copytree(kept, old_record)  # the record of before, over entries that were retrained since
    assert "was replaced after the run record was written" in why(config(home, "other"))


def test_a_file_the_config_names_is_part_of_the_key(home):
    labels = home / "labels.jsonl"
    labels.write_text('{"id": "train-0", "prob": 0.5}\n')
    before = replay.record_key(config(home, "x", "labels=file", f"labels.path={labels}"))
    labels.write_text('{"id": "train-0", "prob": 0.6}\n')
    assert replay.record_key(config(home, "x", "labels=file", f"labels.path={labels}")) != before


# Composes the test config as the tests above do and replays it, in a fresh interpreter.
REPLAY_ALONE = """
import json, sys
from pathlib import Path
from tests.helpers import compose_cfg
from w2s_lightning import replay
folder, out, *overrides = sys.argv[1:]
cfg = compose_cfg(Path(folder), *overrides)
cfg.paths.output_dir = out
answer = replay.replay(cfg)
print(json.dumps({"score": answer and answer.score, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_replay_imports_neither_torch_nor_lightning(home):
    score = run(config(home, "pipeline"))
    cmd = [sys.executable, "-c", REPLAY_ALONE, str(home), str(home / "alone"), *overrides(home)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["score"] == score
    assert not HEAVY & set(answer["modules"]), f"replay imported {sorted(HEAVY & set(answer['modules']))}"
    assert outputs(home / "alone") == outputs(home / "pipeline")


@pytest.fixture(scope="module")
def cli(trained, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, set[str]]:
    """`python -X importtime train.py ...` on a copy of the cached config: the copy, the result and
    the packages it imported."""
    home = shutil.copytree(trained, tmp_path_factory.mktemp("cli"), dirs_exist_ok=True)
    cmd = [sys.executable, "-X", "importtime", str(ROOT / "train.py"), *TINY, *overrides(home)]
    cmd += [f"paths.cache_dir={home / 'cache'}", f"hydra.run.dir={home / 'cli'}"]
    env = {**os.environ, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    return home, proc, imported


def test_the_command_line_replays_with_the_summary_and_exit_status(cli):
    home, proc, _ = cli
    assert proc.returncode == 0, proc.stderr[-2000:]
    run(config(home, "pipeline"))
    assert outputs(home / "cli") == outputs(home / "pipeline")
    assert "nothing to run" in proc.stdout
    summary = proc.stdout[proc.stdout.index("== done in ") :].splitlines()
    assert [line.split()[0] for line in summary[1:]] == ["weak", "ceiling", "student", "PGR", "results"]
    assert summary[1].endswith("earlier)")  # "from the cache (trained in ... earlier)"


def test_the_command_line_replays_without_torch_lightning_or_pandas(cli):
    _, proc, imported = cli
    assert proc.returncode == 0 and "hydra" in imported  # the import log was read
    heavy = imported & (HEAVY | DATA_LIBRARIES)
    assert not heavy, f"a replayed run imported {sorted(heavy)}"


@pytest.mark.slow
def test_a_rerun_optuna_study_is_replayed_and_scores_the_same(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e '.[optuna]'")
    command = [sys.executable, "train.py", "-m", "hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=2"]
    for _ in range(2):  # the sampler is seeded: the second study asks for the same two trials
        done = subprocess.run(
            [*command, f"paths.root_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-4000:]
    first, second = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    logs = [log.read_text() for log in second.glob("*/train.log")]
    assert len(logs) == 2 and all("nothing to run" in log for log in logs)
    assert scores(second) == scores(first)
    best = [yaml.safe_load((sweep / "optimization_results.yaml").read_text()) for sweep in (first, second)]
    assert best[1] == best[0] and best[1]["best_value"] == max(scores(second))


def scores(sweep: Path) -> list[float]:
    """What each trial of a study returned to the sweeper, in job order."""
    return [json.loads(p.read_text())["student"]["val_weak_acc"] for p in sorted(sweep.glob("*/results.json"))]
