"""`python -m w2s_lightning.report <sweep_dir>`: write the report of a finished sweep."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from omegaconf import OmegaConf

from w2s_lightning.report import collect, median_markdown, median_pgr_table, write_report


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
    write_report(args.sweep_dir, wandb_cfg)
    print(median_markdown(median_pgr_table(collect(args.sweep_dir))))


if __name__ == "__main__":
    main()
