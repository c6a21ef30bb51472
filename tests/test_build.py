from llmstream import _ops


def test_effective_threads_honours_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _ops.effective_threads() == 3
    _ops.set_threads(1)
    try:
        assert _ops.effective_threads() == 1
    finally:
        _ops.set_threads(0)


def test_default_threads_are_the_physical_cores(monkeypatch):
    import os
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= _ops.physical_cores() <= (os.cpu_count() or 1)
    assert _ops.effective_threads() == _ops.physical_cores()
