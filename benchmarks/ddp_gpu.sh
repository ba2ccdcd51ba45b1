#!/usr/bin/env bash
# gpt2-xl QLoRA on 1 GPU vs N GPUs (DDP, torchrun), the same global batch and the same number of steps, so both
# see the same number of samples. Prints a markdown table: tokens/s (whole run and steady state), the speed-up over
# 1 GPU, validation loss after those samples, peak GPU memory. Goal (issue 6): >= 1.8x on 2 GPUs, equal loss.
#
# usage: benchmarks/ddp_gpu.sh TOKENIZER_DIR [DATA_FILE]
#   TOKENIZER_DIR  the real GPT-2 tokenizer folder (shared/data/gpt2_tokenizer)
#   DATA_FILE      default: TOKENIZER_DIR/../wikidoc_patient_information/wikidoc_patient_information.json
# environment (defaults):
#   GPUS="1 2"        GPU counts to run, each a fresh run; results of earlier invocations with the same STEPS and
#                     GLOBAL_BATCH are kept, so `GPUS=1 ...` then `GPUS=2 ...` also builds the full table;
#                     GPUS= (empty) only prints the table of the runs already in OUT
#   GLOBAL_BATCH=16   examples per optimizer step, split evenly over the GPUs (no gradient accumulation)
#   BATCH_TOKENS=     instead of GLOBAL_BATCH: token-budget batches as in the preset (train.batch_tokens), this many
#                     tokens per step split over the GPUs, e.g. 16384; samples per step then vary a little
#   STEPS=100         optimizer steps (samples = STEPS x GLOBAL_BATCH)
#   PER_GPU=0         1: weak scaling: GLOBAL_BATCH / BATCH_TOKENS is the batch of each GPU (not split), so N GPUs
#                     train on N times the samples per step (speed-up: tokens/s; the losses are not comparable)
#   OUT=runs/ddp-bench  where runs, logs and the table (table.md) go; PYTHON=python3; KEEP_BASE=0 (the random
#                     base_model/ of each run is 6 GB: deleted after the run unless KEEP_BASE=1)
#   MODEL=random:gpt2-xl, ALLOW_CPU=0: a run of this script without GPUs (gloo), e.g.
#                     MODEL=random:tiny STEPS=4 ALLOW_CPU=1 PYTHON=.venv/bin/python benchmarks/ddp_gpu.sh ../shared/data/gpt2_tokenizer
#   DRY_RUN=0         1: check the arguments and print each run's command line; nothing runs, no Python package or
#                     GPU is needed (tests/test_benchmarks.py)
#
# On the lent 2-GPU machine (no network there; about 55 MB travel): from the repo root here, once
#   echo /.bench-data/ >> .git/info/exclude && cp -r ../shared/data .bench-data
#   [ -d .whl ] || bash ../shared/tools/device-wheels.sh       # bitsandbytes (and trl, datasets) wheels in .whl/
# then run (kind nvidia-h100-x2, carry [".whl", ".bench-data"]):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && bash benchmarks/ddp_gpu.sh .bench-data/gpt2_tokenizer; \
#     cp runs/ddp-bench/table.md runs/ddp-bench/gpus-*.log $OUT/
# Each run takes a few minutes (building and quantizing a random gpt2-xl is about a minute of it); if both do not fit
# one 10-minute command, run GPUS=1 and GPUS=2 as two commands on the same warm machine (runs/ stays there).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TOK=${1:?usage: benchmarks/ddp_gpu.sh TOKENIZER_DIR [DATA_FILE]}
DATA=${2:-$TOK/../wikidoc_patient_information/wikidoc_patient_information.json}
GPUS=${GPUS-1 2}
GLOBAL_BATCH=${GLOBAL_BATCH:-16}
BATCH_TOKENS=${BATCH_TOKENS:-}
STEPS=${STEPS:-100}
OUT=${OUT:-runs/ddp-bench}
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-random:gpt2-xl}
KEEP_BASE=${KEEP_BASE:-0}
PER_GPU=${PER_GPU:-0}
DRY_RUN=${DRY_RUN:-0}
[ -d "$TOK" ] || { echo "ddp_gpu: tokenizer folder not found: $TOK" >&2; exit 2; }
[ -f "$DATA" ] || { echo "ddp_gpu: data file not found: $DATA" >&2; exit 2; }
TOK=$(cd "$TOK" && pwd)
DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # medtune from this checkout, installed or not
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}  # NVLink multicast stays off on shared hosts

GLOBAL=${BATCH_TOKENS:+$BATCH_TOKENS tokens}
GLOBAL=${GLOBAL:-$GLOBAL_BATCH examples}
[ "$PER_GPU" = 1 ] && GLOBAL="$GLOBAL per GPU"
max_gpus=0
for n in $GPUS; do
  [ "$n" -gt "$max_gpus" ] && max_gpus=$n
  if [ "$PER_GPU" != 1 ] && [ $((${BATCH_TOKENS:-$GLOBAL_BATCH} % n)) -ne 0 ]; then echo "ddp_gpu: the global batch does not split over $n GPUs" >&2; exit 2; fi
done
[ "$DRY_RUN" = 1 ] || "$PYTHON" - "$max_gpus" <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "yaml", "matplotlib")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"ddp_gpu: missing Python packages: {' '.join(missing)} (see the header of this script for wheels)")
import os, torch, transformers, peft, accelerate, bitsandbytes
need, have = int(sys.argv[1]), torch.cuda.device_count()
print(f"ddp_gpu: torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, "
      f"accelerate {accelerate.__version__}, bitsandbytes {bitsandbytes.__version__}; "
      f"{have} GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(have))}")
if have < need and os.environ.get("ALLOW_CPU") != "1":
    sys.exit(f"ddp_gpu: {need} GPUs asked for, {have} visible")
EOF

for n in $GPUS; do
  run=$OUT/gpus-$n
  [ "$DRY_RUN" = 1 ] || rm -rf "$run"
  split=$n
  [ "$PER_GPU" = 1 ] && split=1
  per=$((GLOBAL_BATCH / split))
  batching=(--set "train.batch_size=$per" --set train.batch_tokens=null)
  if [ -n "$BATCH_TOKENS" ]; then
    per=$((BATCH_TOKENS / split))
    batching=(--set train.packing=true --set "train.batch_tokens=$per")
  fi
  devices=$(seq -s, 0 $((n - 1)))
  args=(train --config configs/gpt2-xl-qlora.yaml --model "$MODEL" --data "$DATA" --output-dir "$run"
        --set "model.tokenizer=$TOK" --set "train.max_steps=$STEPS" "${batching[@]}"
        --set train.grad_accum=1 --set train.max_memory_gib=null
        --set train.eval_steps=1000000 --set train.eval_on_start=false --set train.save_steps=1000000 --set train.logging_steps=10
        --set train.report_to=none)
  if [ "$n" -eq 1 ]; then
    launch=("$PYTHON" -m medtune)
  else
    launch=("$PYTHON" -m torch.distributed.run --standalone "--nproc-per-node=$n" -m medtune)
  fi
  echo "ddp_gpu: $n GPU(s), $per ${BATCH_TOKENS:+tokens}${BATCH_TOKENS:-examples} per GPU x $n per step, $STEPS steps -> $run"
  if [ "$DRY_RUN" = 1 ]; then
    echo "ddp_gpu: would run: CUDA_VISIBLE_DEVICES=$devices ${launch[*]} ${args[*]}"
    continue
  fi
  start=$(date +%s)
  set +e
  CUDA_VISIBLE_DEVICES=$devices "${launch[@]}" "${args[@]}" > "$OUT/gpus-$n.log" 2>&1
  rc=$?
  set -e
  grep -E "^(data|model|train|done):|Error|error:" "$OUT/gpus-$n.log" | tail -n 8 || true
  if [ "$rc" -ne 0 ]; then echo "ddp_gpu: the $n-GPU run failed (exit $rc); its log: $OUT/gpus-$n.log" >&2; tail -n 30 "$OUT/gpus-$n.log" >&2; exit "$rc"; fi
  printf '{"gpus": %d, "per_gpu_batch": %d, "global_batch": "%s", "steps": %d, "model": "%s", "wall_seconds": %d}\n' \
    "$n" "$per" "$GLOBAL" "$STEPS" "$MODEL" $(( $(date +%s) - start )) > "$run/bench.json"
  [ "$KEEP_BASE" = 1 ] || rm -rf "$run/base_model"
done

if [ "$DRY_RUN" = 1 ]; then echo "ddp_gpu: dry run: nothing was run"; exit 0; fi
"$PYTHON" - "$OUT" "$GLOBAL" "$STEPS" "$MODEL" "$(basename "$DATA")" <<'EOF' | tee "$OUT/table.md"
import json, statistics, sys
from pathlib import Path

out, global_batch, steps, model, data = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = []
for d in sorted((p for p in out.glob("gpus-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1])):
    if not (d / "bench.json").exists() or not (d / "metrics.json").exists():
        continue
    b = json.loads((d / "bench.json").read_text())
    if (b["global_batch"], b["steps"], b.get("model")) != (global_batch, steps, model):
        continue  # an earlier invocation with other settings
    m = json.loads((d / "metrics.json").read_text())
    f, hist = m["final"], m["log_history"]
    rates = [h["tokens_per_second"] for h in hist if "tokens_per_second" in h]
    steady = statistics.median(rates[2:]) if len(rates) > 2 else float("nan")  # past step 1 and the first interval
    device = json.loads((d / "manifest.json").read_text()).get("device", "?")
    rows.append((b, f, steady, device))
if not rows:
    sys.exit("ddp_gpu: no finished runs to tabulate")
base = {r[0]["gpus"]: r for r in rows}.get(1)
n, unit = global_batch.split()[:2]
if global_batch.endswith("per GPU"):
    samples = " (weak scaling: N GPUs train on N times the samples, so their losses are not comparable)"
else:
    samples = f" = {int(n) * steps} samples" if unit == "examples" else " (about the same samples for each GPU count)"
print(f"\n{model} QLoRA (random weights, NF4, LoRA r16), {data}, global batch {global_batch}, "
      f"{steps} steps{samples}; device: {rows[0][3]}\n")
print("| GPUs | batch per GPU | tokens/s (whole run) | tokens/s (steady) | speed-up (steady) | validation loss | "
      "train loss | peak GPU memory, rank 0 | train s | wall s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for b, f, steady, _ in rows:
    speed = f"{steady / base[2]:.2f}x" if base and base[2] == base[2] and base[2] > 0 else "-"
    print(f"| {b['gpus']} | {b['per_gpu_batch']} | {f['tokens_per_second']:,.0f} | {steady:,.0f} | {speed} | "
          f"{f.get('eval_loss', float('nan')):.4f} | {f.get('train_loss', float('nan')):.4f} | "
          f"{f.get('peak_gpu_memory_gib', float('nan')):.2f} GiB | {f['train_seconds']:.1f} | {b['wall_seconds']} |")
print("\ntokens/s counts non-padding tokens of all GPUs; steady = median over logging intervals after the first two; "
      "validation loss = the whole validation split after the last step.")
EOF
