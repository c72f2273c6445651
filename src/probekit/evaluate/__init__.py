"""Evaluation: QA extraction, inverse search, reversal-curse tasks and distraction, with shared scoring rules.

This face imports nothing (``probekit.evaluate.config`` stays torch-free); import each entry point from its
module.

Entry points (each checks its inputs before any work and writes predictions, a results table and figures):

- ``qa.run_qa(checkpoint, data, out, FinetuneConfig(...), attrs)``: finetune on P_train questions (full / LoRA /
  none), exact match and first-token accuracy on P_test per attribute; ``mixed_train(train_cfg, "2:8")`` for
  mixed training.
- ``inverse.run_inverse(checkpoint, data, out, FinetuneConfig(...), attrs)``: attributes -> name.
- ``reversal.train_reversal(data_dir, train_cfg)`` and ``reversal.run_reversal(checkpoint, data_dir, out)``:
  N2D, D2N and reverses.
- ``probekit.reporting.evaluation.write_comparison(result_dirs, out)``: one table and figure across several
  evaluations.

Results rows: ``model, objective, task, metric, value, n`` (+ ``split``, ``kind``, ``finetune`` for QA/inverse).
"""
