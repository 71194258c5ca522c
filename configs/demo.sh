#!/usr/bin/env bash
# The main job, offline on the embedded default model (Gemma 3 270M, a base model) on the CPU, until
# `huarizo run CONFIG.yaml` wires the same public APIs together:
#   1. datagen: the embedded model, served by `huarizo serve`, is the teacher of an Alpaca batch-generation run
#      (completion prompts, our own seed tasks), filtered;
#   2. trainer: a few LoRA steps on the embedded model, on the seed tasks plus whatever survived the filter;
#   3. serve + judge: the base and the tuned model answer our own demo questions; the base model judges them
#      pairwise in both orders (a 270M base model is a poor judge: expect many unparsed verdicts, counted as errors).
# Everything lands in runs/demo (HUARIZO_DEMO_DIR). About 5-10 minutes on 2 cores; the first run also converts
# the embedded model (about a minute).
set -euo pipefail
out=${HUARIZO_DEMO_DIR:-runs/demo}
port_base=${HUARIZO_DEMO_PORT:-8731}
port_tuned=$((port_base + 1))
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_healthy() {  # wait_healthy PORT PID: until /health answers, or the server process dies
  python - "$1" "$2" <<'EOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 600
while time.time() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        sys.exit(0)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(f"the server on port {port} exited before it was ready")
        time.sleep(1)
sys.exit(f"the server on port {port} did not become ready")
EOF
}

echo "== 0. seed tasks shipped with huarizo-datagen"
seeds=$(python -c "import huarizo.datagen as d, pathlib; print(pathlib.Path(d.__file__).parent / 'data' / 'seeds.jsonl')")
huarizo validate "$seeds"
huarizo convert "$seeds" "$out/seed-alpaca.jsonl" --to alpaca

echo "== 1. serve the embedded model as the teacher, generate and filter"
huarizo serve --model embedded --dtype bfloat16 --port "$port_base" --model-name embedded > "$out/serve-base.log" 2>&1 &
pids+=($!)
wait_healthy "$port_base" "${pids[-1]}"
huarizo datagen run configs/datagen/alpaca.yaml \
  --set output_dir="$out/datagen" --set teacher.api_base="http://127.0.0.1:$port_base/v1" \
  --set num_records=20 --set requests_per_round=2 --set max_rounds=1 --set teacher.max_tokens=768
files="[$out/seed-alpaca.jsonl]"
if [ -s "$out/datagen/records.jsonl" ]; then files="[$out/seed-alpaca.jsonl, $out/datagen/records.jsonl]"; fi

echo "== 2. fine-tune the embedded model (LoRA, a few steps)"
huarizo train configs/demo/train.yaml --set output_dir="$out/train" --set "data.files=$files"
huarizo render "$out/seed-alpaca.jsonl" --template alpaca --tokenizer "$out/train/final" -n 1

echo "== 3. serve the tuned model; both models answer; the base model judges"
huarizo serve --model "$out/train/final" --dtype bfloat16 --port "$port_tuned" --model-name tuned \
  > "$out/serve-tuned.log" 2>&1 &
pids+=($!)
wait_healthy "$port_tuned" "${pids[-1]}"
huarizo judge answer --model openai/embedded --api-base "http://127.0.0.1:$port_base/v1" --api-key none \
  --template alpaca --questions configs/demo/questions.jsonl --out "$out/answers/base.jsonl" --max-tokens 96
huarizo judge answer --model openai/tuned --api-base "http://127.0.0.1:$port_tuned/v1" --api-key none \
  --questions configs/demo/questions.jsonl --out "$out/answers/tuned.jsonl" --max-tokens 96
huarizo judge grade --mode pairwise --questions configs/demo/questions.jsonl \
  --answers "$out/answers/tuned.jsonl" --baseline "$out/answers/base.jsonl" \
  --judge openai/embedded --api-base "http://127.0.0.1:$port_base/v1" --api-key none --out "$out/judge" \
  --parse-retries 1 --set max_tokens=48
echo "== done: $out/judge/report.md"
