"""probekit: where do small language models store biography facts, and can they extract and reverse them?"""

__version__ = "0.1.0"
