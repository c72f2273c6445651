#!/usr/bin/env bash
# Where the reversed fact lives: NTP, ABI and BICO trained from scratch on the reversal-curse facts (three seeds),
# and BICO as finetuning of an NTP checkpoint; each model evaluated on the four tasks, read out at the name and
# at the description (probekit probe with probes/reversal.yaml, control task and random-init copy), patched on
# the four tasks' prompts (probekit patch on the reversal data) and linked to reversal success person by person.
# Usage: bash experiments/reversal_mechanism/run.sh [OUT] [SEEDS] [CONFIGS]
# (OUT default runs/reversal_mechanism, SEEDS default "0 1 2"; CONFIGS default this directory: where train.yaml,
# pretrain.yaml and finetune.yaml are read, and data.args, extra flags of `probekit data reversal`, if present).
# With other CONFIGS (a quick variant, as the test suite runs) the tables and figures stay beside OUT and are not
# copied into the repository. Re-running skips every finished step.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-runs/reversal_mechanism}" && cd "${1:-runs/reversal_mechanism}" && pwd)"
seeds="${2:-0 1 2}"
configs="$(cd "${3:-$here}" && pwd)"
data_args=()
[ -f "$configs/data.args" ] && read -r -a data_args < "$configs/data.args"
[ -f "$out/data/manifest.json" ] || probekit data reversal --out "$out/data" --seed 0 "${data_args[@]}" --overwrite

model() {  # name objective config: train + evaluate (skipped when done), then read out and link
  local name="$1" obj="$2" cfg="$3"
  if [ ! -f "$out/$name/results.csv" ]; then
    probekit --threads 1 eval reversal --data "$out/data" --train-config "$cfg" --objective "$obj" --name "$name" \
      --out "$out/$name" --overwrite --no-progress --no-png > "$out/$name.log" 2>&1
  fi
  if [ ! -f "$out/patch_$name/results.csv" ]; then
    probekit --threads 1 patch --model "$out/$name/train" --data "$out/data" --all-pairs --pairs 30 --no-png \
      --name "$name" --out "$out/patch_$name" --overwrite > "$out/patch_$name.log" 2>&1
  fi
  if [ ! -f "$out/probe_$name/link.csv" ]; then
    probekit --threads 1 probe --spec "$root/probes/reversal.yaml" --model "$out/$name/train" --data "$out/data" \
      --reversal-eval "$out/$name" --control-random --name "$name" --out "$out/probe_$name" --overwrite \
      > "$out/probe_$name.log" 2>&1
  fi
}

for s in $seeds; do
  sed "s/^seed: 0/seed: $s/" "$configs/train.yaml" > "$out/train_s$s.yaml"
  for obj in ntp abi bico; do model "${obj}_s$s" "$obj" "$out/train_s$s.yaml"; done
  if [ "$s" = "0" ]; then  # BICO as finetuning of one NTP checkpoint, and NTP finetuning of the same one
    sed "s/^seed: 0/seed: $s/" "$configs/pretrain.yaml" > "$out/pretrain_s$s.yaml"
    model "pretrain_ntp_s$s" ntp "$out/pretrain_s$s.yaml"
    sed -e "s#PRETRAINED#$out/pretrain_ntp_s$s/train#" -e "s/^seed: 0/seed: $s/" "$configs/finetune.yaml" \
      > "$out/finetune_s$s.yaml"
    for obj in ntp bico; do model "ft_${obj}_s$s" "$obj" "$out/finetune_s$s.yaml"; done
  fi
done

here_rel="${here#$root/}"
summary="${out}_summary"  # beside the run: probekit never writes into what it reads
if [ "$configs" != "$here" ]; then  # a variant: HTML figures and tables beside the run only
  probekit plot --reversal "$out" --out "$summary" --no-png
  echo "tables and figures in $summary (a variant's configs: nothing copied into the repository)"
  exit 0
fi
probekit plot --reversal "$out" --out "$summary"
mkdir -p "$here/results" "$root/figures/reversal_mechanism"
cp "$summary"/*.csv "$here/results/"
cp "$summary"/*.png "$summary"/*.csv "$root/figures/reversal_mechanism/" 2>/dev/null \
  || echo "no PNG figures (is chromium installed?)"
echo "tables in $here_rel/results, figures in figures/reversal_mechanism"
