"""Benchmarks of w2s-lightning: framework overhead, padding, sweep cost, machine limit, memory.
Run `python bench/run.py --help`."""
