#!/usr/bin/env bash
# The levers' tables (experiments/shared_names/results/levers) and figures (figures/shared_names/levers) from a
# finished (or partly finished) run of levers.yaml.
# Usage (repository root): bash experiments/shared_names/levers_figures.sh [RUN]   (RUN default ~/runs/shared_names_levers)
set -euo pipefail
run=${1:-$HOME/runs/shared_names_levers}
bash experiments/shared_names/collect.sh "$run" experiments/shared_names/results/levers figures/shared_names/levers \
  compare_storage_scatter compare_objectives_q_first_token patch_route
