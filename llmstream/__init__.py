"""llmstream: a small CPU LLM server for quantized GGUF models (llama, mistral, phi-2)."""
import os as _os

# The native core runs its own OpenMP threads on every core; numpy's OpenBLAS pool would only compete
# with them for the same cores (its idle threads spin). Set before numpy is first imported; an
# explicit OPENBLAS_NUM_THREADS wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
