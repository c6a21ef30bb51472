"""Shared fixtures. `../shared` (beside the project root) holds the vocabularies and the llama.cpp
reference models; without it those tests skip with a message, except under CI=true, where its absence
fails the run."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# LLMSTREAM_TEST_SHARED: where ../shared is when the tests run from a copy of the project
# (tests/test_avx512_emulated.py)
SHARED = Path(os.environ.get("LLMSTREAM_TEST_SHARED") or ROOT.parent / "shared")


def shared_path(*parts) -> Path:
    """Path inside ../shared, or skip (fail under CI=true) when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        msg = f"{p} is missing: the shared test data must sit at {SHARED}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(params=[False, True], ids=["avx2", "avx512"])
def avx512(request):
    """Run a test with the AVX2 kernels only, then with the AVX-512 matmul kernels (where the CPU
    has them)."""
    from llmstream import _ops
    if request.param and not _ops.cpu_has_avx512():
        pytest.skip("CPU lacks AVX512F/BW/VL/VNNI: no AVX-512 kernels to compare")
    if not _ops.cpu_has_avx2():
        pytest.skip("CPU lacks AVX2/FMA/F16C")
    before = _ops.get_simd()
    want = _ops.SIMD_AVX512 if request.param else _ops.SIMD_AVX2
    assert _ops.set_simd(want) == want
    yield request.param
    _ops.set_simd(before)


@pytest.fixture(params=[0, 1], ids=["scalar", "avx2"])
def simd(request):
    """Run a test at both SIMD levels (the AVX2 half skips on CPUs without AVX2); the level in use
    before is restored."""
    from llmstream import _ops
    if request.param == 1 and not _ops.cpu_has_avx2():
        pytest.skip("CPU lacks AVX2/FMA/F16C: only the scalar kernels can run here")
    before = _ops.get_simd()
    assert _ops.set_simd(request.param) == request.param
    yield request.param
    _ops.set_simd(before)
