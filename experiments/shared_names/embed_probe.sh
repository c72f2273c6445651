#!/usr/bin/env bash
# The paper's own Q-probe at the name (a rank-16 update of the input embedding trained with LayerNorm + linear heads
# on the last layer, gradients through the frozen model; probes/embed_update.yaml) on every finished model of
# experiment runs, beside the frozen linear probe: does the paper's protocol find the facts at the name where the
# frozen probe does not? First-token targets, P_train people train, P_test people test, as the frozen probes.
# Each model's probe goes to OUT/<model>; the rows of every model under OUT are gathered into the table DEST
# (default experiments/shared_names/results/levers/embed_update_q.csv) with a per-model summary printed.
# Resumes: a model whose probe is finished is skipped.
# Usage (repository root): bash experiments/shared_names/embed_probe.sh OUT RUN [RUN ...]
#   e.g. bash experiments/shared_names/embed_probe.sh ~/runs/embed_q ~/runs/shared_names ~/runs/shared_names_levers
#   the people axis: DEST=experiments/shared_names/results/people/embed_update_q.csv \
#     bash experiments/shared_names/embed_probe.sh ~/runs/embed_q_people ~/runs/people_m5p_1000 ~/runs/people_m5p_3000
set -euo pipefail
out=$1; shift
dest=${DEST:-experiments/shared_names/results/levers/embed_update_q.csv}
mkdir -p "$out"
for run in "$@"; do
  for model in "$run"/models/*/; do
    model=${model%/}; name=$(basename "$model")
    [[ -e "$model/.complete" ]] || { echo "skip $name: training not finished"; continue; }
    [[ -e "$out/$name/results.csv" ]] && { echo "done $name"; continue; }
    data=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"])' "$model/train_config.json")
    probekit probe --spec probes/embed_update.yaml --spec.kinds q --model "$model" --data "$data" \
      --out "$out/$name" --no-png --no-progress --overwrite
  done
done
python - "$out" "$dest" <<'EOF'
import sys
from pathlib import Path

import pandas as pd

rows = pd.concat([pd.read_csv(f) for f in sorted(Path(sys.argv[1]).glob("*/results.csv"))])
rows = rows[rows["probe_kind"] == "q"].reset_index(drop=True)
dest = Path(sys.argv[2])
dest.parent.mkdir(parents=True, exist_ok=True)
rows.to_csv(dest, index=False)
# per model and probe: the layer with the best validation accuracy per attribute (the embedding-update probe has
# one reading, at the last layer), then the mean over the attributes, in percent
best = rows.loc[rows.groupby(["model", "hook", "attribute"])["val_accuracy"].idxmax()]
table = best.groupby(["model", "hook"])[["accuracy", "baseline"]].mean().mul(100).round(1).unstack("hook")
print(table.to_string())
print(f"wrote {dest}")
EOF
