#!/usr/bin/env bash
# Parity of the fast (low-precision) generation mode with exact fp32 (issue #14 item 4): the same 500 seeded
# ARC-Easy test items, greedy, the task's own budget, batch 16, evaluated exact then fast, then paired.
#   bash results/fast_mode/run.sh            (from the repository root; resumable: --resume)
set -euo pipefail
export T2_DATA_DIR="${T2_DATA_DIR:-../shared/data}" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
T2=.venv/bin/t2
OUT=results/fast_mode
common=(--model smollm2-135m-instruct --task arc-easy --limit 500 --seed 0 --batch-size 16 --resume)
for p in exact fast; do
    python3 -c "import os; print('$p start', os.getloadavg())"
    $T2 eval "${common[@]}" --precision "$p" --out "$OUT/arc-easy-500-$p" --json > "$OUT/arc-easy-500-$p.summary.json"
    python3 -c "import os; print('$p end', os.getloadavg())"
done
$T2 compare "$OUT/arc-easy-500-exact" "$OUT/arc-easy-500-fast" --json > "$OUT/compare-arc-easy-500.json"
$T2 compare "$OUT/arc-easy-500-exact" "$OUT/arc-easy-500-fast"
