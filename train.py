"""Run one weak-to-strong experiment (or, with -m, a sweep of them).

python train.py                                   # the embedded default, offline
python train.py weak_model=gpt2 strong_model=gpt2_large dataset=sciq loss=logconf
python train.py -m weak_model=tiny_bert strong_model=tiny_gpt2 seed=0,1

A mistake in the input (a knob out of range, a bad data file) prints one line, `error: ...`,
that names the fix, and exits with status 2; in a sweep the other jobs go on.

It prints the run folder first and a summary (accuracies, PGR, where results.json is) last; on a
terminal each stage shows a progress bar, in a log file one line per epoch. Library chatter
(Lightning's tips, W&B's banners, known deprecation warnings) stays off unless `verbose=true`.
"""

import hydra
from omegaconf import DictConfig

from w2s_lightning import config, heap
from w2s_lightning.cli import main_task

config.setup()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return main_task(cfg)


if __name__ == "__main__":
    heap.own_process()  # a process of our own: spare it the collector's walks over imported objects
    main()
