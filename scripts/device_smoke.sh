#!/usr/bin/env bash
# Every t2 path once on a device (default cuda): train (SVF/LoRA x RL/SFT, fp32 and bf16), eval with and without an
# expert, the router, the classifier, few-shot CEM, t2 run, export. A smoke check, not a benchmark: it fails on the
# first error and prints one line per step with its seconds.
#
#   bash scripts/device_smoke.sh MODEL [DEVICE] [WORKDIR]
#
# MODEL is any --model spec, or `tiny`: a tiny random Llama over the embedded model's tokenizer (real chat template,
# millisecond forwards), built into WORKDIR. Needs T2_DATA_DIR.
# T2 (default `t2`) is the command to run, e.g. T2="python3 -m transformer_squared.cli.main".
set -euo pipefail
model=${1:?usage: device_smoke.sh MODEL [DEVICE] [WORKDIR]}
device=${2:-cuda}
work=${3:-$(mktemp -d)}
read -r -a t2 <<<"${T2:-t2}"
: "${T2_DATA_DIR:?set T2_DATA_DIR to the benchmark data directory}"
mkdir -p "$work"
if [[ $model == tiny ]]; then
  model="$work/tiny-model"
  "${PYTHON:-python3}" - "$model" <<'PY'
import sys
from transformers import AutoTokenizer
from transformer_squared.models import resolve
from transformer_squared.testing import tiny_chat_model
tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct")[0])
tok.pad_token = tok.pad_token or tok.eos_token
tiny_chat_model(tok).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
PY
fi

step() {  # step NAME ARGS...: run one t2 command, print its time; stop on failure
  local name=$1 t0=$SECONDS; shift
  if ! "${t2[@]}" "$@" >"$work/$name.out" 2>"$work/$name.err"; then
    echo "FAIL $name: t2 $*"; tail -20 "$work/$name.err"; exit 1
  fi
  echo "ok   $name ($((SECONDS - t0)) s)"
}

small=(--model "$model" --task arc-easy --steps 2 --batch-size 2 --max-new-tokens 8 --eval-every 2 --valid-limit 4
       --test-limit 4 --no-progress --device "$device")
step train-svf-rl train "${small[@]}" --method svf --objective rl --samples-per-prompt 2 --temperature 1 --out "$work/svf-rl"
step train-svf-rl-bf16 train "${small[@]}" --method svf --objective rl --samples-per-prompt 2 --temperature 1 --dtype bf16 \
     --out "$work/svf-rl-bf16"
step train-svf-sft train "${small[@]}" --method svf --objective sft --out "$work/svf-sft"
step train-lora-rl train "${small[@]}" --method lora --objective rl --samples-per-prompt 2 --temperature 1 --out "$work/lora-rl"
step train-lora-sft train "${small[@]}" --method lora --objective sft --out "$work/lora-sft"
step eval-base eval --model "$model" --device "$device" --task arc-easy --limit 8 --max-new-tokens 8 --json
step eval-expert eval --model "$model" --device "$device" --task arc-easy --limit 8 --max-new-tokens 8 \
     --expert "$work/svf-rl/expert" --json

# An expert set: three domain experts (random z around 1), the dispatch expert, the router.
set_dir="$work/experts"
mkdir -p "$set_dir"
for d in reasoning math code; do
  step "init-$d" expert init --model "$model" --device "$device" --noise 0.05 --seed 1 --domain "$d" \
       --out "$set_dir/$d"
done
step train-dispatch train --model "$model" --device "$device" --task dispatch --experts "$set_dir" --method svf \
     --objective sft --steps 2 --batch-size 4 --max-new-tokens 8 --eval-every 2 --valid-limit 6 --test-limit 6 \
     --no-progress --out "$work/dispatch"
cp -r "$work/dispatch/expert" "$set_dir/dispatch"
step router adapt --model "$model" --device "$device" --router --experts "$set_dir" --per-domain 8 --json
for s in router classifier prompt; do
  step "eval-$s" eval --model "$model" --device "$device" --task arc-challenge --limit 6 --max-new-tokens 8 \
       --experts "$set_dir" --strategy "$s" --pass1-tokens 8 --json
done
step fewshot adapt --model "$model" --device "$device" --task arc-challenge --shots 4 --experts "$set_dir" \
     --population 4 --iterations 2 --max-new-tokens 8 --out "$work/fewshot" --json
step eval-fewshot eval --model "$model" --device "$device" --task arc-challenge --limit 6 --max-new-tokens 8 \
     --experts "$set_dir" --strategy fewshot --adapted "$work/fewshot" --json
step run run --model "$model" --device "$device" --experts "$set_dir" --strategy router --max-new-tokens 8 --json \
     "What is 2 + 3?" "Write a Python function that reverses a list."
step export-lora expert export "$work/svf-sft/expert" --model "$model" --format lora --rank 4 --out "$work/lora-export"
echo "device smoke on $device: all steps passed ($work)"
