#!/usr/bin/env bash
# The patching demo, end to end (one core; see README.md here for the wall times measured on a shared 2-core box).
set -euo pipefail
R=runs/patching_demo
probekit --threads 1 data bios --n 300 --augmentation multi5+permute --seed 0 --pool-limit birth_city=15 \
    --pool-limit university=15 --pool-limit major=15 --pool-limit company=15 --out $R/data
probekit --threads 1 train --config experiments/patching_demo/train.yaml --out $R/ntp
# QA extraction: full finetune on the P_train questions (20 epochs, lr 3e-4), greedy answers to P_test's
probekit --threads 1 eval qa --checkpoint $R/ntp --data $R/data --out $R/qa --no-png
# Patching on the QA prompts of P_test people, with the finetuned model
probekit --threads 1 patch --model $R/qa/finetune --data $R/data --out $R/patch_qa --mode patch,restore \
    --hooks resid,attn_out,mlp_out --whole-answer --no-png
# Patching on biography prefixes with the pretrained model (every person's biographies were trained on)
probekit --threads 1 patch --model $R/ntp --data $R/data --out $R/patch_bio --prompts bio --split all \
    --mode patch,restore --hooks resid,attn_out,mlp_out --no-png
