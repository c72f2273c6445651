"""Evaluation: QA extraction, inverse search and reversal-curse tasks, with shared scoring rules.

Entry points (each checks its inputs before any work and writes predictions, a results table and figures):

- ``run_qa(checkpoint, data, out, FinetuneConfig(...), attrs)``: finetune on P_train questions (full / LoRA /
  none), exact match and first-token accuracy on P_test per attribute; ``mixed_train(train_cfg, "2:8")`` for
  mixed training.
- ``run_inverse(checkpoint, data, out, FinetuneConfig(...), attrs)``: attributes -> name.
- ``train_reversal(data_dir, train_cfg)`` and ``run_reversal(checkpoint, data_dir, out)``: N2D, D2N and reverses.
- ``write_comparison(result_dirs, out)``: one table and figure across several evaluations.

Results rows: ``model, objective, task, metric, value, n`` (+ ``split``, ``kind``, ``finetune`` for QA/inverse).
"""

from probekit.evaluate.figures import read_eval_results, results_frame, write_comparison, write_results
from probekit.evaluate.inverse import inverse_items, run_inverse
from probekit.evaluate.qa import (
    EvalItem,
    FinetuneConfig,
    evaluate_items,
    finetune,
    load_adapter,
    mixed_train,
    qa_eval_items,
    run_extraction,
    run_qa,
)
from probekit.evaluate.reversal import evaluate_reversal, run_reversal, train_reversal
from probekit.evaluate.scoring import completion_logprobs, ids_exact_match, paired_test, text_exact_match

__all__ = [
    "EvalItem", "FinetuneConfig", "completion_logprobs", "evaluate_items", "evaluate_reversal", "finetune",
    "ids_exact_match", "inverse_items", "load_adapter", "mixed_train", "paired_test", "qa_eval_items",
    "read_eval_results", "results_frame", "run_extraction", "run_inverse", "run_qa", "run_reversal",
    "text_exact_match", "train_reversal", "write_comparison", "write_results",
]  # fmt: skip
