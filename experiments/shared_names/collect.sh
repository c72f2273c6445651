#!/usr/bin/env bash
# Tables and figures of a finished (or partly finished) shared_names run, for the write-up: re-renders the run's
# figures beside it (probekit never writes into what it reads), copies its tables into RESULTS and the named
# figures (PNG + the CSV of the plotted rows) into FIGURES, with the render's provenance.json.
# Usage (repository root): bash experiments/shared_names/collect.sh RUN RESULTS FIGURES FIGURE [FIGURE ...]
#   the main run: see figures.sh; the levers: see levers_figures.sh
set -euo pipefail
run=$1 results=$2 figures=$3; shift 3
rendered="${run}_figures"
probekit plot --experiment "$run" --out "$rendered"
mkdir -p "$results/comparison" "$figures"
cp "$run"/summary.txt "$run"/qa.csv "$run"/recall.csv "$run"/patch.csv "$run"/timings.csv "$run"/results.csv "$results/"
cp "$rendered"/comparison/*.csv "$results/comparison/"
for f in "$@"; do
  cp "$rendered/$f".csv "$figures/"
  cp "$rendered/$f".png "$figures/" 2>/dev/null || echo "no PNG of $f (is chromium installed?)"
done
cp "$rendered"/provenance.json "$figures/"  # the render's command, inputs and versions
echo "tables in $results, figures in $figures"
