"""Training: the trainer (``trainer``), what it trains on (``data``), finetuning before evaluation
(``finetune``) and their settings (``config``, torch-free)."""
