#!/usr/bin/env bash
# The people axis's tables (experiments/shared_names/results/people/<part>) and figures (figures/shared_names/people)
# from the runs of people.yaml, one per model (each may be missing or unfinished: what has finished is collected),
# joined with the 300-person key pair of the levers (results/levers) in one scale figure.
# Usage (repository root): bash experiments/shared_names/people_figures.sh [RUNS]   (RUNS default ~/runs: holds
#   people_m5p_1000, people_m5p_3000, people_single_3000, as people.yaml's header runs them)
set -euo pipefail
runs=${1:-$HOME/runs}
results=experiments/shared_names/results/people figures=figures/shared_names/people
scales=()
for part in m5p_1000 m5p_3000 single_3000; do
  run="$runs/people_$part"
  if [ ! -f "$run/summary.txt" ]; then echo "people_$part: not finished, left out"; continue; fi
  bash experiments/shared_names/collect.sh "$run" "$results/$part" "$figures/$part" patch_route
  scales+=("$results/$part/comparison/scale.csv")
done
# the 300-person points: the levers' key pair, both levers on (seed 0, the same settings but people and tokens)
joined="$runs/people_figures"
mkdir -p "$joined"
grep -E '^(model,|ntp_(m5p|single)_fullname_mixed_n12,)' experiments/shared_names/results/levers/comparison/scale.csv \
  > "$joined/levers_300.csv"
probekit plot --scale "$joined/levers_300.csv" "${scales[@]}" --out "$joined/scale"
cp "$joined/scale/scale_storage_extraction.csv" "$figures/"
cp "$joined/scale/scale_storage_extraction.png" "$figures/" 2>/dev/null || echo "no PNG (is chromium installed?)"
cp "$joined/scale/provenance.json" "$figures/" 2>/dev/null || true
echo "tables in $results, figures in $figures"
