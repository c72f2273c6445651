"""Activation patching: name-swap maps of where an answer is read from (``patch``); settings in ``config``."""
