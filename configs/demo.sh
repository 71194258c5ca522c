#!/usr/bin/env bash
# The main job on the embedded default model: validate, convert and render data with the embedded model's tokenizer.
set -euo pipefail
out=${HUARIZO_DEMO_DIR:-runs/demo}
mkdir -p "$out"
seeds=$(python -c "import huarizo.datagen as d, pathlib; print(pathlib.Path(d.__file__).parent / 'data' / 'seeds.jsonl')")
huarizo validate "$seeds"
huarizo convert "$seeds" "$out/seed-alpaca.jsonl" --to alpaca
huarizo render "$out/seed-alpaca.jsonl" --template vicuna_v1.1 --tokenizer embedded -n 2
