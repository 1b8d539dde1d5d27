"""What a person watching a run sees: per-stage progress, and the lines around it."""

from __future__ import annotations


def stage_callbacks(cfg, stage: str) -> list:
    """Lightning callbacks that show a stage's progress."""
    return []
