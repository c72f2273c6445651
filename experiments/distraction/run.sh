#!/usr/bin/env bash
# Distraction and System 2 Attention on biography QA (issue 15; METHODS 5).
# Usage: bash experiments/distraction/run.sh [OUT=runs/distraction]
# 1. bioS multi5+permute, 200 people, pools of 10 values, with the distractor words in the tokenizer;
# 2. a 4-layer, 128-wide NTP model pretrained on it (resumes from its last checkpoint when interrupted);
# 3. probekit eval distract: the distractable QA finetuning, the learned regenerator, P_test under every
#    distractor kind x (baseline, S2A rule, S2A learned, oracle), probes and hint patching (--resume reuses
#    finished finetuning runs).
# Copies the tables to experiments/distraction/results/ and the figures to figures/distraction/.
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
probekit --threads 1 eval distract --config "$here/config.yaml" --checkpoint "$out/pretrain" --data "$out/data" \
  --name ntp_multi5_permute --out "$out/eval" --resume
mkdir -p "$here/results" "$here/../../figures/distraction"
for t in results gap regen probes patch_hint; do cp "$out/eval/$t.csv" "$here/results/"; done
cp "$out/eval/eval_config.json" "$here/results/"
cp "$out"/eval/*.html "$out"/eval/distract_*.csv "$out"/eval/probes_by_layer.csv "$out"/eval/patch_hint_*.csv \
  "$here/../../figures/distraction/"
cp "$out"/eval/*.png "$here/../../figures/distraction/" 2>/dev/null || echo "no PNG figures (is chromium installed?)"
