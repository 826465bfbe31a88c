#!/usr/bin/env bash
# Reproduces docs/results.md: generate the default play dataset, relabel it for RIL and the
# baselines, train every method for several seeds, evaluate on the kitchen goals.
# Usage: bash scripts/results.sh [OUT=results] [SEEDS="0 1 2"] [ROLLOUTS=2] [STEPS=5000]
set -euo pipefail
OUT=${OUT:-results}
SEEDS=${SEEDS:-"0 1 2"}
ROLLOUTS=${ROLLOUTS:-2}
STEPS=${STEPS:-5000}
EPISODES=${EPISODES:-400}
K=${K:-2}
HORIZON=${HORIZON:-1200}
R=".venv/bin/relay"
PLAY="$OUT/data/kitchen_play/n${EPISODES}_s0/1.0.0"

[ -f "$PLAY/dataset_info.json" ] || $R generate --episodes "$EPISODES" --data-dir "$OUT/data" --workers 2
$R data info "$PLAY" --plot "$OUT/play_info.png"
relabel() { [ -f "$OUT/relabeled/$1/metadata.json" ] || $R relabel --source "$PLAY" --level "$2" "${@:3}" --output "$OUT/relabeled/$1"; }
relabel low low --window 30 --goals-per-step "$K"
relabel high high --window 30 --window-high "$HORIZON" --goals-per-step "$K"
relabel flat flat --window "$HORIZON" --goals-per-step "$K"
relabel final final-goal
relabel bc bc
for seed in $SEEDS; do
  m="$OUT/models/s$seed"
  [ -f "$m/ril/agent.json" ] || $R train-il --agent ril --low "$OUT/relabeled/low" --high "$OUT/relabeled/high" --out "$m/ril" --steps "$STEPS" --seed "$seed"
  [ -f "$m/gcbc/agent.json" ] || $R train-il --agent gcbc --data "$OUT/relabeled/flat" --out "$m/gcbc" --steps "$STEPS" --seed "$seed"
  [ -f "$m/gcbc_norelabel/agent.json" ] || $R train-il --agent gcbc-norelabel --data "$OUT/relabeled/final" --out "$m/gcbc_norelabel" --steps "$STEPS" --seed "$seed"
  [ -f "$m/bc/agent.json" ] || $R train-il --agent bc --data "$OUT/relabeled/bc" --out "$m/bc" --steps "$STEPS" --seed "$seed"
  [ -f "$OUT/eval_s$seed.json" ] || $R eval --model "$m/ril" --model "$m/gcbc" --model "$m/gcbc_norelabel" --model "$m/bc" \
      --play "$PLAY" --goals 17 --rollouts "$ROLLOUTS" --max-steps "$HORIZON" --seed "$seed" \
      --json "$OUT/eval_s$seed.json" --plot "$OUT/eval_s$seed.png"
done
.venv/bin/python -m relay_agents.report "$OUT"/eval_s*.json --out "$OUT/summary.md" --plot "$OUT/summary.png"
