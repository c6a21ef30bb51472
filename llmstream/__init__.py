"""llmstream: a small CPU LLM server for quantized GGUF models (llama, mistral, phi-2)."""
import os as _os

# The native core runs its own OpenMP threads on every core; numpy's OpenBLAS pool would only compete
# with them for the same cores (its idle threads spin). Set before numpy is first imported; an
# explicit OPENBLAS_NUM_THREADS wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# A thread that reaches a barrier first spins this many rounds (tens of microseconds), then sleeps
# until its peers arrive, instead of libgomp's default of 300,000 rounds (milliseconds): on a busy
# machine a spinning thread would burn the time slice its descheduled peer needs. Work inside each
# parallel region is pulled dynamically (schedule="dynamic"), so a descheduled thread holds up one
# work item, never a share of a whole matmul. Read by libgomp when it loads (with the native core);
# an explicit GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__version__ = "0.1.0"
