#!/usr/bin/env bash
# The demo: set up, synthesize a mosi-profile benchmark, train Self-MM with the offline MiniLM
# encoder, print the results table. About a minute on 2 idle CPU cores from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh minilm
. .venv/bin/activate
export HF_HUB_OFFLINE=1
mkdir -p demo-out
data=demo-out/mosi-scale0.25.pkl
[ -f "$data" ] || selfmm synth --profile mosi --scale 0.25 --seed 0 --out "$data"
run="demo-out/run-$(date +%Y%m%d-%H%M%S)"
time selfmm train --dataset mosi --data "$data" --text-model minilm --seeds 1111 \
    --max-epochs "${DEMO_EPOCHS:-4}" --out "$run"
echo "run written to $run; try: selfmm labels $run && selfmm report $run"
