"""Build the native core: csrc/*.c under the Cython module llmstream._ops.

OpenMP is probed: when the compiler cannot build an OpenMP program, the extension is still built
(single-threaded) and a warning says so. AVX2/FMA kernels are compiled with per-file target pragmas
and chosen at run time (csrc/cpu.c), so one build runs on CPUs with and without AVX2.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiles(flags):
    src = "#include <omp.h>\nint main(void){\n#pragma omp parallel\n{}\nreturn omp_get_max_threads() > 0 ? 0 : 1;}\n"
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "t.c")
        with open(c, "w") as f:
            f.write(src)
        try:
            r = subprocess.run([cc, c, "-o", os.path.join(d, "t")] + flags,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            return False
        return r.returncode == 0


OPENMP = os.environ.get("LLMSTREAM_NO_OPENMP") != "1" and _compiles(["-fopenmp"])
if not OPENMP:
    sys.stderr.write("warning: OpenMP not available; building llmstream single-threaded\n")

compile_args = ["-O3", "-std=gnu11", "-fno-math-errno", "-Wno-unused-function"]
link_args = []
if OPENMP:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

# Test builds only: LLMSTREAM_EMULATE_AVX512=1 compiles the AVX-512 kernels for AVX2 through SIMDe
# (csrc/avx512_emulated.h) so that tests can run them on a CPU without AVX-512. Never for use.
EMULATE_AVX512 = os.environ.get("LLMSTREAM_EMULATE_AVX512") == "1"

sources = ["llmstream/_ops.pyx"] + sorted(
    os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".c"))

ext = Extension(
    "llmstream._ops",
    sources=sources,
    include_dirs=["csrc", np.get_include()],
    extra_compile_args=compile_args + (["-Wno-psabi"] if EMULATE_AVX512 else []),
    extra_link_args=link_args,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                   ("LS_OPENMP", "1" if OPENMP else "0")]
                  + ([("LS_EMULATE_AVX512", "1")] if EMULATE_AVX512 else []),
)

setup(
    ext_modules=cythonize([ext], language_level=3),
)
