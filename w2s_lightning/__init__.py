"""w2s-lightning: weak-to-strong generalization experiments with Lightning and Hydra."""

__version__ = "0.1.0"
