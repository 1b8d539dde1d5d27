"""`python -m w2s_lightning.report <sweep_dir>`: write the report of a finished sweep."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from w2s_lightning.report import collect, median_markdown, median_pgr_table, unfinished, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m w2s_lightning.report", description="Write the report of a finished sweep into its folder."
    )
    parser.add_argument("sweep_dir", type=Path, help="the multirun folder (hydra.sweep.dir)")
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the report as a W&B run with the settings of conf/logger/wandb.yaml "
        "(offline into the sweep folder; WANDB_MODE=online logs live)",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    wandb_cfg = None
    if args.wandb:
        from w2s_lightning.config import CONF_DIR

        wandb_cfg = OmegaConf.load(CONF_DIR / "logger" / "wandb.yaml").wandb
    frame = collect(args.sweep_dir)
    written = write_report(args.sweep_dir, wandb_cfg, frame)
    print(median_markdown(median_pgr_table(frame)))
    if not unfinished(frame).empty:
        print(f"{len(unfinished(frame))} of {len(frame)} jobs did not finish: see {written['report']}")


if __name__ == "__main__":
    main()
