#!/usr/bin/env bash
# Reversal curse under NTP, ABI and BICO: the same model shape trained from scratch on the same facts,
# evaluated on N2D, D2N and their reverses (exact match + log-prob of the right vs a random completion).
# Usage: bash experiments/reversal_objectives/run.sh [OUT=runs/reversal_objectives]
# Writes tables to experiments/reversal_objectives/results/ and figures to figures/reversal_objectives/.
# The three trainings run at once, one torch thread each; re-running skips finished evaluations.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/reversal_objectives}"
mkdir -p "$out"
[ -f "$out/data/manifest.json" ] || probekit data reversal --out "$out/data" --seed 0 --overwrite
for obj in ntp abi bico; do
  if [ ! -f "$out/$obj/results.csv" ]; then
    probekit --threads 1 eval reversal --data "$out/data" --train-config "$here/train.yaml" --objective "$obj" \
      --name "$obj" --out "$out/$obj" --overwrite > "$out/$obj.log" 2>&1 &
  fi
done
wait
probekit eval compare "$out/ntp" "$out/abi" "$out/bico" --out "$out/compare" --overwrite
mkdir -p "$here/results"
cp "$out"/compare/*.csv "$here/results/"
for obj in ntp abi bico; do cp "$out/$obj/results.csv" "$here/results/$obj.csv"; done
figs="$here/../../figures/reversal_objectives"
mkdir -p "$figs"
cp "$out"/compare/*.png "$out"/compare/*.csv "$figs/" 2>/dev/null || echo "no PNG figures (is chromium installed?)"
