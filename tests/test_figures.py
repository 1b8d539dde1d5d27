"""The report's figures on a hand-built GPT-2 ladder sweep (3 weak x 3 strong x 2 losses x 3 seeds):
300-dpi PNGs with PDFs beside them, one accuracy series per weak model and loss plus the ceiling
and the weak models' own accuracies, and the PGR printed in each heatmap cell. No training."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from w2s_lightning import report
from w2s_lightning.report import figures

from .helpers import run_identity

SIZES = {"gpt2": 1.24e8, "gpt2_medium": 3.55e8, "gpt2_large": 7.74e8, "gpt2_xl": 1.56e9}
WEAK, STRONG = ("gpt2", "gpt2_medium", "gpt2_large"), ("gpt2_medium", "gpt2_large", "gpt2_xl")
LOSSES, SEEDS = ("xent", "logconf"), (0, 1, 2)
WEAK_ACC = {"gpt2": 0.62, "gpt2_medium": 0.66, "gpt2_large": 0.70}
CEILING = {"gpt2_medium": 0.70, "gpt2_large": 0.76, "gpt2_xl": 0.80}
# The share of the gap a student recovers (its PGR): more for larger students and under logconf,
# below zero for gpt2_large -> gpt2_xl under xent, above one for gpt2 -> gpt2_xl under logconf.
GAIN = {"xent": 0.3, "logconf": 0.5}
# gpt2_xl's ceiling in seed 2 falls below gpt2_large's own accuracy: that pair's PGR is undefined.
BAD_CEILING = ("gpt2_xl", 2)


def pgr(weak: str, strong: str, loss: str) -> float:
    return GAIN[loss] + 0.4 * STRONG.index(strong) - 0.6 * WEAK.index(weak)


def accuracies(weak: str, strong: str, loss: str, seed: int) -> tuple[float, float, float]:
    jitter = 0.01 * (seed - 1)
    w, c = WEAK_ACC[weak] + jitter, CEILING[strong] - jitter
    if (strong, seed) == BAD_CEILING:
        c = WEAK_ACC["gpt2_large"] + jitter - 0.01
    return w, w + pgr(weak, strong, loss) * (c - w), c


def result(weak: str, strong: str, loss: str, seed: int) -> dict:
    record = run_identity(weak, strong, loss, seed, SIZES, name="ladder")
    if SIZES[strong] <= SIZES[weak]:
        return {**record, "status": "skipped", "reason": f"strong model {strong} is not larger than weak model {weak}"}
    w, s, c = accuracies(weak, strong, loss, seed)
    return {
        **record,
        "status": "done",
        "weak": {"acc": w},
        "student": {"acc": s, "val_weak_acc": 0.9},
        "ceiling": {"acc": c},
        "pgr": (s - w) / (c - w) if c > w else None,
    }


def write_ladder(root: Path) -> Path:
    for num, (weak, strong, loss, seed) in enumerate(
        (w, s, loss, seed) for w in WEAK for s in STRONG for loss in LOSSES for seed in SEEDS
    ):
        job = root / f"{num}_{weak}-{strong}_s{seed}"
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps(result(weak, strong, loss, seed)))
    return root


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    sweep_dir = write_ladder(tmp_path_factory.mktemp("ladder"))
    return sweep_dir, report.collect(sweep_dir)


@pytest.fixture(scope="module")
def written(ladder):
    return figures.write_figures(*reversed(ladder))


def test_pngs_at_300_dpi_with_pdfs_beside_them(ladder, written):
    assert sorted(written) == ["accuracy_vs_size", "pgr_heatmap"]
    for path in written.values():
        assert path.parent == ladder[0] and path.suffix == ".png"
        assert Image.open(path).info["dpi"] == pytest.approx((300, 300), abs=0.01)
        pdf = path.with_suffix(".pdf")
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def test_accuracy_figure_has_a_series_per_weak_model_and_loss(ladder):
    fig = figures.accuracy_figure(ladder[1], "sciq")
    [ax] = fig.axes
    labels = sorted(c.get_label() for c in ax.containers)
    # gpt2_large supervises only gpt2_xl; every weak model has a line under both losses.
    students = [f"student: {w}, {loss}" for w in WEAK for loss in LOSSES]
    assert labels == sorted([*students, "ceiling", *(f"weak alone: {w}" for w in WEAK)])
    assert len(ax.containers) == len(WEAK) * len(LOSSES) + 1 + len(WEAK)
    series = {c.get_label(): c.lines[0] for c in ax.containers}
    assert series["student: gpt2, xent"].get_linestyle() == "-"
    assert series["student: gpt2, logconf"].get_linestyle() == "--"
    assert series["ceiling"].get_color() == "black"
    # The weak model's own accuracy sits at its own size, in its line's colour.
    star = series["weak alone: gpt2"]
    assert star.get_xdata()[0] == SIZES["gpt2"]
    assert list(star.get_color()) == list(series["student: gpt2, xent"].get_color())
    assert star.get_ydata()[0] == pytest.approx(WEAK_ACC["gpt2"])
    ceiling = [statistics.mean(accuracies("gpt2", s, "xent", seed)[2] for seed in SEEDS) for s in STRONG]
    assert list(series["ceiling"].get_ydata()) == pytest.approx(ceiling)
    # Model names, not parameter counts, on the x axis; the legend sits outside the axes.
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gpt2", "gpt2_medium", "gpt2_large", "gpt2_xl"]
    [legend] = fig.legends
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_heatmap_cells_carry_the_numbers(ladder):
    fig = figures.heatmap_figure(ladder[1], "sciq")
    panels = [ax for ax in fig.axes if ax.get_title().startswith("loss ")]
    assert [ax.get_title() for ax in panels] == ["loss xent", "loss logconf"]
    for ax, loss in zip(panels, LOSSES):
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert texts[0, 0] == f"{pgr('gpt2', 'gpt2_medium', loss):.2f}"
        assert texts[2, 0] == "skipped"  # gpt2_large -> gpt2_medium: strong not larger
        assert texts[1, 0] == texts[2, 1] == "self"  # skipped too, but the reason is plainer
        expected = f"{pgr('gpt2_large', 'gpt2_xl', loss):.2f}" + "\n2/3 seeds"
        assert texts[2, 2] == expected  # gpt2_large -> gpt2_xl: seed 2 has no PGR (its ceiling is too low)
        image = ax.get_images()[0]
        assert image.get_array().mask[2, 0] and not image.get_array().mask[0, 0]
        assert image.get_cmap().name == figures.PGR_PALETTE


@pytest.mark.parametrize(("key", "values"), [("dataset", ("boolq", "sciq")), ("method", ("confident", "weak"))])
def test_each_dataset_and_method_gets_figures_of_its_own(tmp_path, key, values):
    for value in values:
        for path in write_ladder(tmp_path / value).rglob("results.json"):
            path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    written = figures.write_figures(report.collect(tmp_path), tmp_path)
    assert sorted(written) == [f"{stem}_{v}" for stem in ("accuracy_vs_size", "pgr_heatmap") for v in values]
