#!/usr/bin/env bash
# Recipe sweep for a small instruct model (issue 12): each variant trains with `medtune train` and is evaluated on
# the validation split with the product's decoding. Usage: benchmarks/recipe_sweep.sh MODEL DATA OUTROOT [VARIANT...]
# A variant is NAME:key=value,key=value (config overrides on top of $CONFIG; a list in brackets: key=[a,b]). Prints
# a markdown table, one row per variant (logs in OUTROOT/NAME.log); exit status 1 when a variant failed.
# Environment: CONFIG (default configs/smollm2-lora.yaml), PYTHON (default python3), JOBS (variants at once, 1),
# QUESTIONS (validation questions each variant answers, 300: all of wikidoc's; 100 gave intervals of +-0.04),
# BENCHMARK (a `medtune eval --benchmark` spec, e.g. pubmedqa=FILE,medqa=FILE: each variant is also scored on them and
# the row names the benchmarks it forgets, i.e. falls below the base model's interval on). The last line names the
# chosen variant by benchmarks/sweep_rule.py. A smoke test in seconds:
#   CONFIG=configs/tiny-cpu.yaml benchmarks/recipe_sweep.sh random:tiny builtin:sample /tmp/sweep \
#     tiny:model.tokenizer=builtin:tiny,train.max_steps=2,eval.num_samples=2,eval.max_new_tokens=4
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${CONFIG:-$here/configs/smollm2-lora.yaml}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"  # medtune from this checkout, installed or not
[ $# -ge 3 ] || { echo "usage: benchmarks/recipe_sweep.sh MODEL DATA OUTROOT [NAME:key=value,...]..." >&2; exit 2; }
model=$1 data=$2 root=$3; shift 3
mkdir -p "$root"
bench=(); [ -n "${BENCHMARK:-}" ] && bench=(--benchmark "$BENCHMARK")
echo "| variant | validation loss | perplexity (x base) | ROUGE-L [95% CI] | EOS rate | repeated 4-grams | mean tokens | forgotten | train s | wall s |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"

variant() {  # NAME:key=value,...  -> its table row in $root/NAME.row
  local v=$1 name=${1%%:*} sets=${1#*:} start s; local args=() kv=()
  # split at the commas outside brackets, so that a list value stays whole: model.lora_targets=[q_proj,v_proj]
  mapfile -t kv < <("$PYTHON" -c 'import re, sys; print(*re.split(r",(?![^\[]*\])", sys.argv[1]), sep="\n")' "$sets")
  for s in "${kv[@]}"; do [ -n "$s" ] && args+=(--set "$s"); done
  start=$(date +%s)
  if ! "$PYTHON" -m medtune train --config "$CONFIG" --model "$model" --data "$data" --output-dir "$root/$name" \
      --set train.report_to=none --set eval.num_samples="${QUESTIONS:-300}" "${args[@]}" > "$root/$name.log" 2>&1 \
    || ! "$PYTHON" -m medtune eval "$root/$name" --split validation "${bench[@]}" >> "$root/$name.log" 2>&1; then
    echo "| $name | failed: see $root/$name.log | | | | | | | | |" > "$root/$name.row"; return 1
  fi
  "$PYTHON" - "$root/$name" "$name" "$(( $(date +%s) - start ))" > "$root/$name.row" <<'PY'
import json, sys
run, name, secs = sys.argv[1:]
m = json.load(open(f"{run}/eval/metrics.json")); f = json.load(open(f"{run}/metrics.json"))["final"]
t, b = m["tuned"], m.get("base") or {}
ratio = f" ({t['perplexity'] / b['perplexity']:.3f})" if b.get("perplexity") else ""
ci = " [{:.3f}, {:.3f}]".format(*t["rouge_l_ci"]) if t.get("rouge_l_ci") else ""
bench = m.get("benchmarks") or {}
lost = ", ".join(n for n, b in bench.items() if b.get("forgetting")) or ("none" if bench else "-")
print(f"| {name} | {f.get('eval_loss', float('nan')):.4f} | {t['perplexity']:.2f}{ratio} | {t['rouge_l']:.3f}{ci} | "
      f"{t['eos_rate']:.0%} | {t['repeated_4gram_share'] or 0:.1%} | {t['mean_answer_tokens']:.0f} | {lost} | "
      f"{f['train_seconds']:.0f} | {secs} |")
PY
}

# JOBS variants at once (default 1): a small model leaves most of a large GPU idle, so several fit side by side;
# their train and wall seconds then include the sharing.
names=()
for v in "$@"; do
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do wait -n; done
  variant "$v" &
  names+=("${v%%:*}")
done
wait
failed=0 finished=()
for name in "${names[@]}"; do
  cat "$root/$name.row"
  if grep -q "failed: see" "$root/$name.row"; then failed=1; else finished+=("$name"); fi
done
"$PYTHON" "$here/benchmarks/sweep_rule.py" "$root" "${finished[@]}"  # the rule, fixed before any run
exit "$failed"
