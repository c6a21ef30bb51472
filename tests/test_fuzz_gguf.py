"""The GGUF fuzzer (scripts/fuzz_gguf.py, `make fuzz`): every saved finding is replayed, and a short
seeded run (mutated bytes for the reader, odd metadata values for the config and the vocabulary)
must give only clean LLMStreamErrors or loads."""
import sys
from pathlib import Path

import pytest

from conftest import ROOT, shared_path

sys.path.insert(0, str(ROOT / "scripts"))
import fuzz_gguf  # noqa: E402

REGRESSIONS = sorted((ROOT / "tests" / "fuzz_regressions").glob("*.gguf"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_saved_findings_stay_fixed(path, tmp_path):
    fuzz_gguf.check(path.read_bytes(), tmp_path / "replay.gguf")


def test_a_short_seeded_fuzz_run_finds_nothing():
    import logging
    seeds = [shared_path(*s.split("/")).read_bytes() for s in fuzz_gguf.SEEDS]
    logging.disable(logging.WARNING)
    try:
        stats = fuzz_gguf.run_random(seeds, seconds=120, seed=2026, max_execs=600)
    finally:
        logging.disable(logging.NOTSET)
    assert stats["execs"] > 0
    assert not stats["findings"], stats["findings"][:5]
