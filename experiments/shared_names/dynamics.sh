#!/usr/bin/env bash
# Training dynamics of the key pair's seed-1 models (seeds.yaml keeps every checkpoint): frozen P- and Q-probes at
# every checkpoint, QA after finetuning at four of them, and the layer x step figure. Run from the repository root
# after (or while) `probekit run experiments/shared_names/seeds.yaml --out ~/runs/shared_names_seeds` trains;
# every step is skipped when its output exists, so the script resumes.
set -euo pipefail
S=${SEEDS_RUN:-$HOME/runs/shared_names_seeds}
OUT=${DYN_OUT:-$HOME/runs/shared_names_dynamics}
for m in ntp_multi5_permute_n12 ntp_single_n12; do
  run=$S/models/$m/seed_1; data=$S/data/${m#ntp_}/seed_1
  while [ ! -e "$run/summary.json" ]; do sleep 30; done  # written when its training ends
  [ -e "$OUT/$m/probes/results.parquet" ] || probekit --threads 1 probe --spec experiments/shared_names/dynamics_spec.yaml \
      --model "$run" --data "$data" --checkpoints all --out "$OUT/$m/probes" --no-png --name "$m"
  qa=()
  for step in 250 750 1250 1954; do
    ck=$run/checkpoints/$(printf 'step_%08d' $step)
    [ -e "$OUT/$m/qa_$step/results.csv" ] || probekit --threads 1 eval qa --checkpoint "$ck" --data "$data" \
      --out "$OUT/$m/qa_$step" --finetune full --epochs 20 --batch-size 32 --lr 0.0003 --no-png --no-progress --overwrite
    qa+=("$step=$OUT/$m/qa_$step")
  done
  probekit plot --dynamics "$OUT/$m/probes" --qa "${qa[@]}" --out "$OUT/$m/figures"
done
