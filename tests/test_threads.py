"""Thread-count invariance: every row of every kernel is computed alone and the threads only decide
who computes which work item (pulled dynamically), so logits are bit-identical with 1, 2 or 3
threads, for a prompt and for single-token decode steps. The models are random-weight files of a
shape big enough that every matmul, decode included, really runs on several threads."""
import numpy as np
import pytest

from llmstream import _ops
from llmstream.bench import build_model
from llmstream.engine import Model, Session


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("threads")
    out = {}
    for shape, ftype in [("small", "Q4_0"), ("small", "Q4_K_M"), ("small", "Q8_0"),
                         ("small-phi2", "Q4_K_M")]:
        path = d / f"{shape}-{ftype}.gguf"
        build_model(path, shape, ftype)
        out[f"{shape}-{ftype}"] = path
    return out


def _logits(path, threads: int) -> np.ndarray:
    import os
    os.environ["LLMSTREAM_ADAPTIVE_THREADS"] = "0"    # exactly `threads`, busy machine or not
    _ops.set_threads(threads)
    try:
        with Model(path, ctx_size=64) as m:
            tokens = np.random.default_rng(3).integers(3, m.n_vocab, 24).astype(np.int32)
            s = Session(m)
            rows = list(s.prefill(tokens[:20], all_logits=True))
            rows += [s.decode_step(int(t)).copy() for t in tokens[20:]]
            return np.stack(rows)
    finally:
        _ops.set_threads(0)
        del os.environ["LLMSTREAM_ADAPTIVE_THREADS"]


@pytest.mark.parametrize("name", ["small-Q4_0", "small-Q4_K_M", "small-Q8_0", "small-phi2-Q4_K_M"])
def test_logits_do_not_depend_on_the_thread_count(models, name):
    with Model(models[name]) as m:      # the premise: a decode step's layer is worth several threads
        layer_bytes = sum(l.w.size for l in vars(m.layers[0]).values() if hasattr(l, "w"))
        assert _ops.team_size(float(layer_bytes), 8) > 1 or _ops.effective_threads() == 1
    one = _logits(models[name], 1)
    assert np.isfinite(one).all()
    for threads in (2, 3):
        np.testing.assert_array_equal(_logits(models[name], threads), one,
                                      err_msg=f"{threads} threads differ from 1")


def test_forward_passes_leave_cores_that_other_work_holds(tmp_path, monkeypatch):
    """CoreWatch: every thread on a quiet machine; beside other runnable tasks, every thread while
    our threads are not kept waiting (their run delay, median of the last passes, under
    DELAY_LIMIT of the pass), else the cores the others leave free (never fewer than one), with
    a short pass trying every thread again each PROBE_EVERY seconds; off when the process does not
    see the whole machine or with LLMSTREAM_ADAPTIVE_THREADS=0."""
    from llmstream.engine import CoreWatch
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(CoreWatch, "LOADAVG", str(loadavg))
    w = CoreWatch(4)
    w.enabled, w.n_cpus = True, 4
    now, waited = [100.0], {"1": 0, "2": 0}
    w.clock, w.run_delays = (lambda: now[0]), (lambda: dict(waited))

    def forward(running, wait_frac, n_tokens=1, seconds=0.1):
        """One pass: `running` tasks on the machine; our slowest thread waits wait_frac of it."""
        loadavg.write_text(f"0.50 0.40 0.30 {running}/321 4242\n")
        n = w.threads(n_tokens)
        now[0] += seconds
        waited["2"] += int(wait_frac * seconds * 1e9)
        w.observe()
        return n

    assert [forward(1, 0.0) for _ in range(3)] == [4, 4, 4]       # quiet: nothing timed
    assert forward(3, 0.05) == 4 and forward(3, 0.02) == 4         # others runnable, harmless
    assert forward(3, 0.45) == 4 and w.waited < w.DELAY_LIMIT      # one unlucky pass
    assert forward(3, 0.45) == 4 and forward(3, 0.45) == 4         # kept waiting: the median says so
    assert w.waited >= w.DELAY_LIMIT
    assert forward(3, 0.0) == 2 and forward(9, 0.0) == 1           # the cores the others leave
    now[0] += w.PROBE_EVERY
    assert forward(3, 0.5, n_tokens=100) == 2                      # a long pass does not probe
    assert forward(3, 0.5) == 4                                    # a probe, still kept waiting
    assert forward(3, 0.0) == 2
    now[0] += w.PROBE_EVERY
    assert forward(3, 0.05) == 4 and forward(3, 0.05) == 4         # the probe found it harmless
    assert [forward(3, 0.5) for _ in range(3)] == [4, 4, 4] and forward(3, 0.0) == 2
    assert forward(1, 0.0) == 4                                    # quiet: every thread at once
    loadavg.write_text("garbage")
    assert w.threads() == 4
    w.enabled = False
    loadavg.write_text("0.50 0.40 0.30 9/321 4242\n")
    assert w.threads() == 4
    monkeypatch.setenv("LLMSTREAM_ADAPTIVE_THREADS", "0")
    assert not CoreWatch(4).enabled


def test_run_delays_are_read_for_this_processes_threads():
    """The kernel's per-thread run-queue wait (what CoreWatch times) is read for our threads, in
    nanoseconds, and never goes back."""
    import os
    import threading

    from llmstream.engine import _run_delays
    if not os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat"):
        pytest.skip("this kernel keeps no per-thread schedstat")
    a = _run_delays()
    assert str(threading.get_native_id()) in a and all(v >= 0 for v in a.values())
    sum(range(200000))
    b = _run_delays()
    assert all(b[t] >= a[t] for t in a if t in b)
