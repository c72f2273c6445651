"""Experiments: a YAML config of datasets, models and stages (``spec``) run by a resumable runner (``runner``)."""
