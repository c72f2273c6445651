#!/usr/bin/env bash
# The main shared_names run's tables (experiments/shared_names/results) and figures (figures/shared_names),
# including the name-sharing axis: the run's 12- and 50-names points beside storage_scale's full-pool pair.
# Usage (repository root): bash experiments/shared_names/figures.sh [RUN]   (RUN default ~/runs/shared_names)
set -euo pipefail
run=${1:-$HOME/runs/shared_names}
bash experiments/shared_names/collect.sh "$run" experiments/shared_names/results figures/shared_names \
  compare_storage_scatter compare_q_first_token compare_p_first_token patch_route
axis="${run}_scale"
probekit plot --scale "$run" experiments/storage_scale/results/comparison/scale.csv --out "$axis"
cp "$axis"/scale_storage_extraction.csv figures/shared_names/
cp "$axis"/scale_storage_extraction.png figures/shared_names/ 2>/dev/null || echo "no PNG (is chromium installed?)"
