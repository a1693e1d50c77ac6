#!/usr/bin/env bash
# Serving on Qwen2.5-Coder-0.5B (issue #12 item 3: every path on the model with signal): `t2 serve` with an expert
# set made of the Qwen MBPP SVF-SFT expert as `code`, pass 1 by prompt self-classification, one plain request and
# one streamed request. Prints the replies and the expert the server chose (its `t2` extension fields).
#   bash results/qwen/serve_smoke.sh            (from the repository root; QWEN=path.gguf to skip the fetch)
set -euo pipefail
T2=(${T2:-.venv/bin/t2})
Q="${QWEN:-$(bash ../shared/tools/fetch-qwen2.5-coder-0.5b.sh)}"
RUNS="${RUNS:-results/qwen/runs}"
D=$(mktemp -d); trap 'kill $PID 2>/dev/null || true; rm -rf "$D"' EXIT
ln -s "$(realpath "$RUNS/mbpp-svf-sft/expert")" "$D/code"
PORT=${PORT:-8765}
"${T2[@]}" serve --model "$Q" --experts "$D" --strategy prompt --port "$PORT" --threads 1 --log-level warning &
PID=$!
for _ in $(seq 600); do curl -sf "localhost:$PORT/health" >/dev/null && break; sleep 1; done
curl -sf "localhost:$PORT/health"; echo
body='{"model": "auto", "max_tokens": 96, "messages": [{"role": "user", "content": "Write a Python function is_palindrome(s) that returns True when the string s reads the same backwards."}]}'
time curl -s -w '\nHTTP %{http_code}\n' "localhost:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d "$body"
time curl -s -N -w '\nHTTP %{http_code}\n' "localhost:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
  -d "${body%\}}, \"stream\": true}" | tail -c 600
curl -s -w '\nHTTP %{http_code}\n' "localhost:$PORT/v1/chat/completions" -H 'Content-Type: application/json' -d '{"model": "auto", "messages": 3}'
