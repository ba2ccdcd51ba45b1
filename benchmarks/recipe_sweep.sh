#!/usr/bin/env bash
# Recipe sweep for a small instruct model (issue 12): each variant trains with `medtune train` and is evaluated on
# the validation split with the product's decoding. Usage: benchmarks/recipe_sweep.sh MODEL DATA OUTROOT [VARIANT...]
# A variant is NAME:key=value,key=value (config overrides on top of configs/smollm2-lora.yaml).
set -uo pipefail
model=$1 data=$2 root=$3; shift 3
for v in "$@"; do
  name=${v%%:*}; sets=${v#*:}
  args=(); IFS=, read -ra kv <<< "$sets"; for s in "${kv[@]}"; do [ -n "$s" ] && args+=(--set "$s"); done
  start=$(date +%s)
  python3 -m medtune train --config configs/smollm2-lora.yaml --model "$model" --data "$data" \
    --output-dir "$root/$name" --set train.report_to=none --set eval.num_samples=50 "${args[@]}" > "$root/$name.log" 2>&1
  python3 -m medtune eval "$root/$name" --split validation >> "$root/$name.log" 2>&1
  python3 - "$root/$name" "$name" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
run, name, secs = sys.argv[1:]
m = json.load(open(f"{run}/eval/metrics.json")); f = json.load(open(f"{run}/metrics.json"))["final"]
t = m["tuned"]
print(f"| {name} | {f.get('eval_loss', float('nan')):.4f} | {t['perplexity']:.2f} | {t['rouge_l']:.3f} | "
      f"{t['eos_rate']:.0%} | {t['repeated_4gram_share'] or 0:.1%} | {t['mean_answer_tokens']:.0f} | "
      f"{f['train_seconds']:.0f} | {secs} |", flush=True)
PY
done
