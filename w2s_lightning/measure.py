"""The metrics step: the only place that reads test labels (and B's, to score the labels a
method produced). Accuracy, AUROC and calibration of the weak side, the ceiling and the
student; PGR; agreement; what a method's labels were worth; its cost; the trackers' record."""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s_lightning import distributed
from w2s_lightning.cache import StageResult
from w2s_lightning.data.splits import SPLIT_NAMES
from w2s_lightning.experiment import Experiment, Labels
from w2s_lightning.loggers import close, log_summary, record_cached, stage_loggers
from w2s_lightning.methods import Start, uses_ground_truth
from w2s_lightning.metrics import agreement, binary_metrics, pgr


def stage_entry(stages: list[StageResult], key: str | None = None) -> dict:
    """Where a result came from: cached or trained, its key(s), its time. Labels read from a
    file come from no stage: only their key."""
    if not stages:
        return {"truncated": {}, "cached": None, "key": key, "train_seconds": 0.0, "cache_path": None}
    return {
        "truncated": stages[0].record.get("truncated", {}),
        "cached": all(s.cached for s in stages),
        "key": stages[0].record["key"] if len(stages) == 1 else [s.record["key"] for s in stages],
        "train_seconds": sum(s.record["train_seconds"] for s in stages),
        "cache_path": str(stages[0].path),
    }


def label_quality(exp: Experiment, weak: Labels, labels: Labels) -> dict:
    """The refined labels against B's ground truth, with what refinement kept and flipped."""
    truth = exp.splits.b["label"].to_numpy()
    keep = labels.b["keep"].to_numpy() if "keep" in labels.b else np.ones(len(truth), bool)
    before, after = weak.b["prob"].to_numpy() > 0.5, labels.b["prob"].to_numpy() > 0.5
    return {
        **binary_metrics(labels.b["prob"].to_numpy()[keep], truth[keep]),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "flipped": int((before != after)[keep].sum()),
        **labels.info,
    }


def test_scores(frame: pd.DataFrame | None, truth: np.ndarray) -> dict | None:
    return None if frame is None else binary_metrics(frame["prob"].to_numpy(), truth)


def save_labels(exp: Experiment, weak: Labels, labels: Labels) -> None:
    """weak_labels.parquet: B's weak labels, refined labels and ground truth side by side."""
    frame = weak.b.rename(columns={"prob": "weak_prob"})
    if labels is not weak:
        frame["refined_prob"] = labels.b["prob"].to_numpy()
        frame["keep"] = labels.b["keep"].to_numpy() if "keep" in labels.b else True
    frame["gt_label"] = exp.splits.b["label"].to_numpy()
    if distributed.is_leader():
        frame.to_parquet(exp.out_dir / "weak_labels.parquet")


def measure(exp: Experiment, methods: dict, start: Start, weak: Labels, labels: Labels, ceiling, student) -> dict:
    truth = exp.splits.test["label"].to_numpy()
    save_labels(exp, weak, labels)
    results = {
        "status": "done",
        "oracle": uses_ground_truth(methods) or weak.uses_ground_truth or labels.uses_ground_truth,
        "weak_labels": binary_metrics(weak.b["prob"].to_numpy(), exp.splits.b["label"].to_numpy()),
        "data": {"guard": exp.splits.guard, "fingerprints": exp.splits.fingerprints(*SPLIT_NAMES)},
    }
    if labels is not weak:
        results["refined_labels"] = label_quality(exp, weak, labels)
    results["weak"] = {
        **(test_scores(weak.test, truth) or {"acc": None, "auroc": None}),
        **stage_entry(weak.stages, weak.key),
    }
    predicted = {name: exp.predictions(stage, "test") for name, stage in (("ceiling", ceiling), ("student", student))}
    for name, stage in (("ceiling", ceiling), ("student", student)):
        results[name] = {**test_scores(predicted[name], truth), **stage_entry([stage])}
    results["student"]["selected"] = student.record.get("selected", {})
    student_test = predicted["student"]["prob"].to_numpy()
    if weak.test is not None:
        results["student"]["agreement"] = agreement(student_test, weak.test["prob"].to_numpy())
    # What a method could select on without ground truth: the student's accuracy on validation
    # labelled by the weak labels. Sweepers optimise this, never a test number.
    student_val = exp.predictions(student, "val")["prob"].to_numpy()
    results["student"]["val_weak_acc"] = agreement(student_val, labels.val["prob"].to_numpy())
    for part in ("steps", "members"):  # bootstrapping's chain, an ensemble's members
        if part in weak.info:
            results[part] = [{"model": s["model"], **test_scores(s["test"], truth)} for s in weak.info[part]]
    acc = {name: results[name]["acc"] for name in ("weak", "ceiling", "student")}
    results["pgr"] = None if acc["weak"] is None else pgr(acc["weak"], acc["student"], acc["ceiling"])
    auroc = [results[n]["auroc"] for n in ("weak", "student", "ceiling")]
    results["pgr_auroc"] = None if auroc[0] is None else pgr(*auroc)
    if start.stages:
        results["pretrain"] = stage_entry(start.stages)
    stages = {s.path: s for s in [*start.stages, *weak.stages, *labels.stages, ceiling, student]}.values()
    # Feature extraction (a probe's, a refiner's) is inference: its time counts, not as a training.
    results["cost"] = {
        "trainings": sum(s.record.get("stage") != "features" for s in stages),
        "seconds": sum(s.record.get("train_seconds", 0.0) + s.record.get("predict_seconds", 0.0) for s in stages),
    }
    track(exp, results)
    return results


def track(exp: Experiment, results: dict) -> None:
    """The metrics run (PGR and every stage's test scores), and a record for cached stages."""
    tags = exp.tags + (["oracle"] if results["oracle"] and "oracle" not in exp.tags else [])
    scores = {f"{n}/test/{k}": v for n in ("weak", "ceiling", "student") for k, v in results[n].items()}
    scores = {k: v for k, v in scores.items() if isinstance(v, float)}
    for name in ("weak", "ceiling", "student"):
        if results[name]["cached"]:
            record_cached(exp.cfg, name, tags, {k: v for k, v in scores.items() if k.startswith(f"{name}/")})
    loggers = stage_loggers(exp.cfg, "metrics", tags)
    log_summary(loggers, {"pgr": results["pgr"], "student/val/weak_acc": results["student"]["val_weak_acc"], **scores})
    close(loggers)
