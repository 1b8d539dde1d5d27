"""The results JSON as a readable table."""

from __future__ import annotations


def fmt(summary: dict, scale: float = 1.0, digits: int = 1) -> str:
    """median (min–max)"""
    median, low, high = (summary[k] / scale for k in ("median", "min", "max"))
    return f"{median:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def overhead_lines(o: dict) -> list[str]:
    if "skipped" in o:
        return [f"Overhead: skipped for {o['model']}: {o['skipped']}"]
    head = (
        f"Overhead: strong student {o['model']} ({o['loss']}, batch {o['batch_size']}/micro {o['micro_batch_size']}, "
        f"{o['precision']} on {o['device']}, torch threads {o['torch_threads']}), "
        f"{o['timed_steps']} timed steps after {o['warmup_steps']} warmup, {o['repeats']} repeats"
    )
    lines = [head, f"  {'':22}{'examples/s':>26}{'real tokens/s':>28}{'padded tokens/s':>28}"]
    for key, label in (("framework", "w2s-lightning"), ("bare", "bare PyTorch loop")):
        r = o[key]
        cells = [fmt(r[k]) for k in ("examples_per_s", "real_tokens_per_s", "padded_tokens_per_s")]
        lines.append(f"  {label:22}{cells[0]:>26}{cells[1]:>28}{cells[2]:>28}")
    ratio = o["ratio_framework_over_bare"]
    lines.append(
        f"  framework/bare throughput: {fmt(ratio, digits=3)} (target: at least 0.95); "
        f"same batches: {'yes' if o['same_batches'] else 'NO'}; max |weight difference| after training: "
        f"{o['max_param_diff']:.2g}"
    )
    return lines


def padding_lines(p: dict) -> list[str]:
    lines = [
        f"Padding: {p['dataset_name']} with the {p['model']} tokenizer, max_length {p['max_length']}, "
        f"batch {p['batch_size']} (inference {p['eval_batch_size']})",
        f"  {'':16}{'examples':>10}{'grouped':>10}{'shuffled':>10}{'inference':>11}{'grid saved':>12}",
    ]
    for key, label in (("dataset", "whole dataset"), ("split_b", "split B")):
        r = p[key]
        lines.append(
            f"  {label:16}{r['examples']:>10}{r['train_grouped']:>10.1%}{r['train_shuffled']:>10.1%}"
            f"{r['inference_sorted']:>11.1%}{r['compute_saved_by_grouping']:>12.1%}"
        )
    return lines


def sweep_lines(s: dict) -> list[str]:
    axes = s["axes"]
    lines = [
        f"Sweep: weak {axes['weak']} × strong {axes['strong']} × losses {axes['losses']}, "
        f"{s['cold']['experiments']} experiments, torch threads {s['torch_threads']}, {s['repeats']} repeats "
        "(wall time includes process start-up)",
        f"  {'':8}{'wall s':>22}{'trainings':>11}{'  weak/ceiling/student':<24}{'reused':>8}",
    ]
    for kind in ("cold", "warm"):
        c = s[kind]
        split = "/".join(str(c["trained"][stage]) for stage in ("weak", "ceiling", "student"))
        lines.append(f"  {kind:8}{fmt(s['wall_seconds'][kind]):>22}{c['trainings']:>11}  {split:<22}{c['reused']:>8}")
    ref = s["without_cache"]
    lines.append(
        f"  trainings without the cache: {ref['no_cache']} (cache.enabled=false), {ref['per_pair']} "
        f"(weak and ceiling shared within a pair only); the least possible: {ref['minimum']}"
    )
    return lines


def limit_lines(limit: dict) -> list[str]:
    peak = limit["peak"]
    lines = [f"Limit: {peak['matrix_size']}² matrix product"]
    for dtype, summary in peak["matmul_flops_per_s"].items():
        lines.append(f"  {dtype:9} peak {fmt(summary, 1e9)} GFLOP/s")
    util = limit.get("utilisation")
    if util:
        reference = util["reference_dtype"]
        lines.append(f"  training estimate (6 × parameters × real tokens/s) against the {reference} peak:")
        for key, label in (("framework", "w2s-lightning"), ("bare", "bare loop")):
            u = util[key]
            lines.append(
                f"  {label:14} {u['flops_per_s'] / 1e9:8.2f} GFLOP/s = {u['utilisation']:.1%} of peak "
                f"({u['utilisation_without_embeddings']:.1%} counting non-embedding parameters only)"
            )
    return lines


def memory_lines(m: dict) -> list[str]:
    stages = m["stages"]
    cuda = any("cuda_peak_allocated_mib" in r for r in stages.values())
    lines = [
        "Memory: each stage in a fresh process; RSS after imports and data, then the stage's own peak",
        f"  {'':9}{'model':>16}{'n_train':>9}{'setup peak':>12}{'RSS before':>12}{'stage peak':>12}"
        f"{'growth':>9}{'seconds':>9}" + (f"{'GPU alloc':>11}" if cuda else "") + "   (MiB)",
    ]
    for stage, r in stages.items():
        line = (
            f"  {stage:9}{r['model']:>16}{r['n_train']:>9}{r['setup_peak_rss_mib']:>12.0f}{r['rss_before_mib']:>12.0f}"
            f"{r['peak_rss_mib']:>12.0f}{r['peak_above_start_mib']:>9.0f}{r['seconds']:>9.1f}"
        )
        if cuda:
            line += f"{r.get('cuda_peak_allocated_mib', 0):>11.0f}"
        if r["peak_scope"] != "stage":
            line += "  (peak of the whole process)"
        lines.append(line)
    return lines


SECTIONS = {
    "overhead": overhead_lines,
    "padding": padding_lines,
    "sweep": sweep_lines,
    "limit": limit_lines,
    "memory": memory_lines,
}


def render(results: dict) -> str:
    meta = results["meta"]
    blocks = [
        [
            f"w2s-lightning benchmark ({meta['mode']} mode) on {meta['device_name']}, {meta['date']}",
            f"  torch {meta['versions']['torch']}, lightning {meta['versions']['lightning']}, "
            f"{meta['cpu_count']} CPUs, load average at start {meta['load_average_start']}",
        ]
    ]
    blocks += [SECTIONS[name](results[name]) for name in SECTIONS if name in results]
    return "\n\n".join("\n".join(block) for block in blocks)
