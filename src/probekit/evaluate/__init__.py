"""Evaluation: QA extraction, inverse search and reversal-curse tasks, with shared scoring rules."""
