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


def test_small_work_runs_on_the_calling_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert _ops.team_size(1e3, 100) == 1          # microseconds of work: no team, no barriers
    assert _ops.team_size(64e6, 100) == 4         # a real matmul: every thread
    assert _ops.team_size(64e6, 3) == 3           # never more threads than work items
    assert _ops.team_size(64e6, 1) == 1


def test_logits_do_not_depend_on_the_thread_count():
    """The same model with 1 and 2 threads (and a team chosen by work size) gives bit-identical
    logits: each row is computed alone, whatever thread computes it."""
    import numpy as np

    from conftest import shared_path
    from llmstream.engine import Model, Session

    path = shared_path("reference", "llama-gqa-Q4_K_M.gguf")
    tokens = np.arange(5, 40, dtype=np.int32)   # 35 tokens x the layer's weights: a team of 2
    out = []
    for threads in (1, 2):
        _ops.set_threads(threads)
        try:
            with Model(path) as m:
                out.append(Session(m).prefill(tokens, all_logits=True))
        finally:
            _ops.set_threads(0)
    np.testing.assert_array_equal(out[0], out[1])
