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
    cpu = o["ratio_framework_over_bare_cpu"]
    lines.append(
        f"  in CPU time: {fmt(cpu, digits=3)}; CPU seconds framework {fmt(o['framework']['cpu_seconds'], digits=2)}, "
        f"bare {fmt(o['bare']['cpu_seconds'], digits=2)}; wall seconds framework "
        f"{fmt(o['framework']['seconds'], digits=2)}, bare {fmt(o['bare']['seconds'], digits=2)}"
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
        f"  {'':8}{'wall s':>22}{'CPU s':>22}{'trainings':>11}{'  weak/ceiling/student':<24}{'reused':>8}",
    ]
    for kind in ("cold", "warm"):
        c = s[kind]
        split = "/".join(str(c["trained"][stage]) for stage in ("weak", "ceiling", "student"))
        wall, cpu = fmt(s["wall_seconds"][kind]), fmt(s["cpu_seconds"][kind])
        lines.append(f"  {kind:8}{wall:>22}{cpu:>22}{c['trainings']:>11}  {split:<22}{c['reused']:>8}")
    ref = s["without_cache"]
    lines.append(
        f"  trainings without the cache: {ref['no_cache']} (cache.enabled=false), {ref['per_pair']} "
        f"(weak and ceiling shared within a pair only); the least possible: {ref['minimum']}"
    )
    return lines


def limit_lines(limit: dict) -> list[str]:
    peak = limit["peak"]
    lines = [f"Limit: {peak['matrix_size']}² matrix product, per wall second and per CPU second"]
    for dtype, summary in peak["matmul_flops_per_s"].items():
        cpu = peak["matmul_flops_per_cpu_s"][dtype]
        lines.append(
            f"  {dtype:9} peak {fmt(summary, 1e9)} GFLOP/s, {fmt(cpu, 1e9)} GFLOP per CPU-s ({peak['dtypes'][dtype]})"
        )
    util = limit.get("utilisation")
    if util:
        reference = util["reference_dtype"]
        lines.append(f"  training FLOPs counted by torch on sampled steps, against the {reference} peak:")
        for key, label in (("framework", "w2s-lightning"), ("bare", "bare loop")):
            u = util[key]
            lines.append(
                f"  {label:14} {u['flops_per_s'] / 1e9:8.2f} GFLOP/s = {u['utilisation']:.1%} of peak; "
                f"per CPU second {u['utilisation_cpu']:.1%}; 6 × non-embedding params × real tokens: "
                f"{u['estimate_6n_utilisation']:.1%}"
            )
    return lines


def memory_lines(m: dict) -> list[str]:
    stages = m["stages"]
    cuda = any("cuda_peak_allocated_mib" in r for r in stages.values())
    lines = [
        "Memory: each stage in a fresh process; RSS after imports and data, then the stage's own peak",
        f"  {'':9}{'model':>16}{'n_train':>9}{'setup peak':>12}{'RSS before':>12}{'stage peak':>12}"
        f"{'growth':>9}{'seconds':>9}{'CPU s':>8}" + (f"{'GPU alloc':>11}" if cuda else "") + "   (MiB)",
    ]
    for stage, r in stages.items():
        line = (
            f"  {stage:9}{r['model']:>16}{r['n_train']:>9}{r['setup_peak_rss_mib']:>12.0f}{r['rss_before_mib']:>12.0f}"
            f"{r['peak_rss_mib']:>12.0f}{r['peak_above_start_mib']:>9.0f}{r['seconds']:>9.1f}{r['cpu_seconds']:>8.1f}"
        )
        if cuda:
            line += f"{r.get('cuda_peak_allocated_mib', 0):>11.0f}"
        if r["peak_scope"] != "stage":
            line += "  (peak of the whole process)"
        lines.append(line)
    return lines


PHASE_LABELS = {
    "setup": "set-up",
    "features": "features",
    "fit": "fit",
    "train_steps": "  steps",
    "validation": "  validation",
    "predict": "predict",
    "other": "other",
    "total": "total",
}


def probe_lines(p: dict) -> list[str]:
    proc = p["process"]
    lines = [
        f"Probe path: weak {p['weak_model']} → strong {p['model']}, three stages in one process, features cached "
        f"between stages, torch threads {p['torch_threads']}, {p['repeats']} repeats (seconds, wall / CPU)",
        f"  process {fmt(proc['seconds'])} / {fmt(proc['cpu_seconds'])}, of which start-up (imports, config, data) "
        f"{fmt(proc['setup_seconds'])} / {fmt(proc['setup_cpu_seconds'])}; frozen-backbone passes "
        f"{fmt(p['features_share'], 0.01, 0)}% of the process's wall time",
    ]
    for stage, row in p["stages"].items():
        cells = []
        for name, label in PHASE_LABELS.items():
            if name in row["phases"]:
                phase = row["phases"][name]
                cpu = f" / {phase['cpu_seconds']['median']:.2f}" if "cpu_seconds" in phase else ""
                cells.append(f"{label.strip()} {phase['seconds']['median']:.2f}{cpu}")
        lines.append(f"  {stage:8} {row['model']} on {row['n_train']}: " + ", ".join(cells))
    return lines


def peer_lines(p: dict) -> list[str]:
    ours, theirs, tr, inf = p["ours"], p["theirs"], p["training"], p["inference"]
    strong = p["models"]["strong"]
    lines = [
        f"Peer: openai/weak-to-strong's algorithm (bench/peer_openai.py) on random-init GPT-2 "
        f"{strong['n_layer']} layers × {strong['n_embd']} on {p['device']}, torch threads {p['torch_threads']}, "
        f"{p['repeats']} repeats, each side with its own defaults",
        f"  ours: {ours['precision']}, batch {ours['batch_size']}/micro {ours['micro_batch_size']}, eval batch "
        f"{ours['eval_batch_size']}, logger {ours['logger'] or 'none'}; theirs: {theirs['dtype']}, batch "
        f"{theirs['batch_size']} in minibatches of {theirs['minibatch_size']}, eval batch {theirs['eval_batch_size']}",
        f"  {'':36}{'examples/s':>26}{'examples per CPU-s':>26}",
    ]
    rows = (
        (f"training, {tr['examples']} ex, theirs", tr["theirs"]),
        ("training, ours length-grouped", tr["ours_grouped"]),
        ("training, ours shuffled", tr["ours_shuffled"]),
        (f"inference, {inf['examples']} ex, theirs", inf["theirs"]),
        ("inference, ours", inf["ours"]),
    )
    for label, r in rows:
        lines.append(f"  {label:36}{fmt(r['examples_per_s']):>26}{fmt(r['examples_per_cpu_s']):>26}")
    ex = p["experiment"]
    lines.append(
        f"  whole experiment (A {ex['data']['a']}, B {ex['data']['b']}, test {ex['data']['test']}), seconds: "
        f"theirs {fmt(ex['theirs']['seconds'])} wall, {fmt(ex['theirs']['cpu_seconds'])} CPU; "
        f"ours {fmt(ex['ours']['seconds'])} wall, {fmt(ex['ours']['cpu_seconds'])} CPU"
    )
    lines.append("  speed-up, their time over ours (above 1: ours is faster), wall / CPU:")
    for key, label in (
        ("training_grouped", "training (ours length-grouped)"),
        ("training_shuffled", "training (ours shuffled)"),
        ("inference", "inference"),
        ("experiment", "whole experiment"),
    ):
        sp = p["speedup"][key]
        lines.append(f"    {label:32}{fmt(sp['wall'], digits=2):>22} / {fmt(sp['cpu'], digits=2)}")
    b = p["batches"]
    yes = {True: "yes", False: "NO"}
    lines.append(
        f"  same batches theirs/ours shuffled: {yes[b['same_batches_theirs_and_ours_shuffled']]}; same examples "
        f"and real tokens in all three: {yes[b['same_examples'] and b['same_real_tokens']]}; same splits in both "
        f"experiments: {yes[ex['same_splits']]}"
    )
    return lines


def mfu_lines(m: dict) -> list[str]:
    if "skipped" in m:
        return [f"MFU: skipped: {m['skipped']}"]
    lines = [
        f"MFU: {m['model']} on {m['device_name']}, {m['precision']}, {m['sequence_length']} tokens, batch "
        f"{m['batch_size']}/micro {m['micro_batch_size']}, {m['timed_steps']} timed steps, {m['repeats']} repeats",
        f"  {fmt(m['tokens_per_s'], digits=0)} tokens/s, {fmt(m['flops_per_s'], 1e12)} TFLOP/s "
        f"(counted {m['flops_per_step'] / 1e12:.2f} TFLOP per step; 6N + attention: "
        f"{m['flops_per_step_analytic'] / 1e12:.2f})",
        f"  of the measured bf16 matmul peak ({m['peak_bf16_measured'] / 1e12:.0f} TFLOP/s): "
        f"{fmt(m['mfu_vs_measured_peak'], 0.01)}%",
    ]
    if "mfu" in m:
        lines.append(
            f"  MFU against the datasheet's {m['peak_bf16_datasheet'] / 1e12:.0f} TFLOP/s: {fmt(m['mfu'], 0.01)}%"
        )
    return lines


def compile_lines(c: dict) -> list[str]:
    lines = [
        f"torch.compile: the ceiling stage in a fresh process, eager against compiled with inductor's cache empty "
        f"and then filled, torch threads {c['threads']}, {c['repeats']} repeats (seconds, wall / CPU)"
    ]
    for label, w in (("probe path", c["probe"]), ("finetuning", c["finetune"])):
        lines.append(f"  {label}: {w['model']} on {w['n_train']}")
        for name, row in ((k, v) for k, v in w.items() if isinstance(v, dict)):  # the variants, as run
            timed = [p for p in ("features", "train_steps") if f"{p}_seconds" in row]
            phases = [f"{p} {row[f'{p}_seconds']['median']:.1f}" for p in timed]
            ratio = f", {row['time_vs_eager']:.2f}× eager's time" if "time_vs_eager" in row else ""
            lines.append(
                f"    {name:20} process {fmt(row['process_seconds'])} / {fmt(row['process_cpu_seconds'])}"
                f"{ratio}; {', '.join(phases)}"
            )
    return lines


SECTIONS = {
    "overhead": overhead_lines,
    "padding": padding_lines,
    "sweep": sweep_lines,
    "limit": limit_lines,
    "probe": probe_lines,
    "memory": memory_lines,
    "peer": peer_lines,
    "mfu": mfu_lines,
    "compile": compile_lines,
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
