#!/usr/bin/env bash
# The levers' tables and figures for the write-up, from a finished (or partly finished) run of levers.yaml:
# re-renders the run's figures beside it (probekit never writes into what it reads), then copies the tables into
# experiments/shared_names/results/levers and the figures the write-up shows into figures/shared_names/levers.
# Usage (repository root): bash experiments/shared_names/levers_figures.sh [RUN]   (RUN default ~/runs/shared_names_levers)
set -euo pipefail
run=${1:-$HOME/runs/shared_names_levers}
figs="${run}_figures"
probekit plot --experiment "$run" --out "$figs"
mkdir -p experiments/shared_names/results/levers figures/shared_names/levers
cp "$run"/summary.txt "$run"/qa.csv "$run"/recall.csv "$run"/patch.csv "$run"/timings.csv "$run"/results.csv \
  experiments/shared_names/results/levers/
cp "$figs"/comparison/*.csv experiments/shared_names/results/levers/
for f in compare_storage_scatter compare_objectives_q_first_token patch_route; do
  cp "$figs/$f".csv figures/shared_names/levers/
  cp "$figs/$f".png figures/shared_names/levers/ 2>/dev/null || echo "no PNG of $f (is chromium installed?)"
done
echo "tables in experiments/shared_names/results/levers, figures in figures/shared_names/levers"
