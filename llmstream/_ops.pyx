# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
"""Native core of llmstream: thin nogil wrappers over csrc/, parallelised with OpenMP prange.

Every function takes C-contiguous numpy arrays and documents their shapes. Python code above this
module orchestrates per layer; anything per element or per row happens here or in C.
"""
import os

cimport cython
from cython.parallel cimport prange, parallel
cimport openmp

IF HAVE_OPENMP:
    pass

_threads = 0


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(HAVE_OPENMP)


def effective_threads():
    """Threads the kernels use: set_threads() if called, else OMP_NUM_THREADS, else all cores."""
    if _threads > 0:
        return _threads
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return os.cpu_count() or 1


def set_threads(int n):
    """Use n threads (n <= 0 goes back to the default of effective_threads())."""
    global _threads
    _threads = n if n > 0 else 0


include "_quants.pxi"
