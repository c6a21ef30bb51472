"""A short `make soak` in the suite: mixed streamed / non-streamed / cancelled / malformed requests
from several clients against a real `llmstream serve`: no 5xx, every seeded answer equal to its
solo reference (no lost or mixed tokens), RSS growth under the stated bound (32 MB here)."""
import json
import subprocess
import sys

from conftest import ROOT, shared_path


def test_a_short_soak_has_no_5xx_no_mixed_tokens_and_bounded_rss():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--seconds", "8",
                        "--clients", "6", "--max-rss-growth-mb", "32",
                        "--model", str(shared_path("reference", "phi2-Q8_0.gguf"))],
                       capture_output=True, text=True, timeout=300)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert r.returncode == 0 and out["ok"], r.stderr[-3000:]
    assert out["server_errors_5xx"] == 0 and out["n_failures"] == 0
    assert set(out["by_kind"]) == {"stream", "whole", "cancel", "malformed"}
    assert out["by_status"].get("400", 0) == out["by_kind"]["malformed"]
    assert out["rss_mb_end"] - out["rss_mb_start"] <= 32
