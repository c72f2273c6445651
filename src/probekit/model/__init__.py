"""The model: ``HookedLM`` (``transformer``), its settings (``config``), the batch it consumes (``batch``),
fused CPU kernels (``kernels``), checkpoints (``checkpoint``) and Hugging Face interop (``hf``)."""
