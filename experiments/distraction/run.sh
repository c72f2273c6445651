#!/usr/bin/env bash
# Distraction and System 2 Attention on biography QA (issue 15; Weston & Sukhbaatar, S2A).
# Usage: bash experiments/distraction/run.sh [OUT=runs/distraction]
# 1. bioS multi5+permute, 200 people, pools of 10 values, with the distractor words in the tokenizer;
# 2. a 4-layer, 128-wide NTP model pretrained on it (resumes from its last checkpoint when interrupted);
# 3. probekit eval distract: the distractable QA finetuning, the learned regenerator, P_test under every
#    distractor kind x (baseline, S2A rule, S2A learned, oracle), probes and hint patching (--resume reuses
#    finished finetuning runs).
# 4. regime 2 (distract_hint95.yaml: hints right 95% of the time) with the same learned regenerator;
# 5. regime 3 (distract_unseen.yaml: + 100 people never in pretraining whose prompts all carry a hint), the same
#    regenerator, and 50 more new people asked under each kind (unseen.csv).
# Copies the tables to experiments/distraction/results/{hint80,hint95,unseen}/, the figures to figures/distraction/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-runs/distraction}"
mkdir -p "$out"
[ -f "$out/data/manifest.json" ] || probekit data bios --n 200 --augmentation multi5+permute --seed 0 \
  --pool-limit birth_city=10 --pool-limit university=10 --pool-limit major=10 --pool-limit company=10 \
  --distract-vocab --out "$out/data"
if [ -f "$out/pretrain/summary.json" ]; then :
elif [ -d "$out/pretrain/checkpoints" ]; then probekit --threads 1 train --out "$out/pretrain" --resume --no-progress
else probekit --threads 1 train --config "$here/pretrain.yaml" --data "$out/data" --out "$out/pretrain" --no-progress
fi
probekit --threads 1 eval distract --config "$here/distract.yaml" --checkpoint "$out/pretrain" --data "$out/data" \
  --name ntp_multi5_permute --out "$out/eval" --resume
# regime 2: hints right 95% of the time, the same learned regenerator
probekit --threads 1 eval distract --config "$here/distract_hint95.yaml" --checkpoint "$out/pretrain" --data "$out/data" \
  --name ntp_multi5_permute_hint95 --out "$out/eval_hint95" --reuse-regenerations "$out/eval" --resume
# regime 3: people the model never read about, whose answers only the hint gives
probekit --threads 1 eval distract --config "$here/distract_unseen.yaml" --checkpoint "$out/pretrain" --data "$out/data" \
  --name ntp_multi5_permute_unseen --out "$out/eval_unseen" --reuse-regenerations "$out/eval" --resume
mkdir -p "$here/results/hint80" "$here/results/hint95" "$here/results/unseen" "$here/../../figures/distraction"
for r in hint80:eval hint95:eval_hint95 unseen:eval_unseen; do
  for t in results gap regen probes patch_hint; do cp "$out/${r#*:}/$t.csv" "$here/results/${r%%:*}/"; done
  cp "$out/${r#*:}/eval_config.json" "$here/results/${r%%:*}/"
done
cp "$out/eval_unseen/unseen.csv" "$here/results/unseen/"
for r in hint80:eval hint95:eval_hint95 unseen:eval_unseen; do
  for f in "$out/${r#*:}"/distract_*.* "$out/${r#*:}"/probes_by_layer.* "$out/${r#*:}"/patch_hint_*.*; do
    case "$f" in *.html|*.png|*.csv) cp "$f" "$here/../../figures/distraction/${r%%:*}_$(basename "$f")";; esac
  done
done
