"""Engine numerics vs llama.cpp: for every case in ../shared/reference/MANIFEST.json, the logits of
`tokens + greedy[:-1]` (first n_prompt in one batch, the rest one token at a time) from the llama.cpp
file and its candle copy, in units of the reference logits' standard deviation.

Run `python tests/test_conformance.py` for the table of measured figures."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SHARED, shared_path  # noqa: E402

from llmstream.engine import Model, Session  # noqa: E402

BOUNDS = {"exact": (0.002, 0.01), "quantized": (0.03, 0.15)}


def _cases():
    path = SHARED / "reference" / "MANIFEST.json"
    if not path.exists():
        return [pytest.param(None, None, id="shared-missing")]
    out = []
    for case in json.loads(path.read_text())["cases"]:
        out.append(pytest.param(case, "llama.cpp", id=f"{case['case']}-llama.cpp"))
        if case["candle_file"]:
            out.append(pytest.param(case, "candle", id=f"{case['case']}-candle"))
    return out


def measure(case, layout, threads=None):
    """(rms, max) of |ours - llama.cpp| / std(llama.cpp logits) for one case and file layout."""
    ref_dir = shared_path("reference")
    ref = np.load(ref_dir / "reference.npz")
    name = case["case"]
    tokens = np.concatenate([ref[f"{name}/tokens"], ref[f"{name}/greedy"][:-1]]).astype(np.int32)
    expected = ref[f"{name}/logits"]
    if layout == "llama.cpp":
        model_path, config = ref_dir / case["llama_cpp_file"], None
    else:
        model_path = ref_dir / case["candle_file"]
        config = ref_dir / f"{case['config']['name']}.config.json"
    n_prompt = case["n_prompt"]
    with Model(model_path, config_path=config and str(config), threads=threads) as m:
        s = Session(m)
        got = np.empty_like(expected)
        got[:n_prompt] = s.prefill(tokens[:n_prompt], all_logits=True)
        for i in range(n_prompt, len(tokens)):
            got[i] = s.decode_step(int(tokens[i]))
    err = (got.astype(np.float64) - expected) / expected.std()
    return float(np.sqrt(np.mean(err ** 2))), float(np.abs(err).max())


@pytest.mark.parametrize("case,layout", _cases())
def test_logits_match_llama_cpp(case, layout):
    if case is None:
        shared_path("reference", "MANIFEST.json")
    rms, mx = measure(case, layout)
    kind = "exact" if case["type"] in ("F32", "F16") else "quantized"
    max_rms, max_abs = BOUNDS[kind]
    assert rms <= max_rms and mx <= max_abs, (
        f"{case['case']} ({layout}): RMS {rms:.5f} (bound {max_rms}), max {mx:.5f} (bound {max_abs})")


if __name__ == "__main__":
    worst = {}
    for p in _cases():
        case, layout = p.values
        rms, mx = measure(case, layout)
        print(f"{case['case']:<22} {layout:<10} rms {rms:.5f}  max {mx:.5f}")
        w = worst.setdefault(case["type"], [0.0, 0.0])
        w[0], w[1] = max(w[0], rms), max(w[1], mx)
    print("\nworst per type (units of the reference logits' std):")
    for t, (r, m) in worst.items():
        print(f"  {t:<8} rms {r:.5f}  max {m:.5f}")
