"""Shared fixtures. `../shared` (beside the project root) holds the vocabularies and the llama.cpp
reference models; without it those tests skip with a message, except under CI=true, where its absence
fails the run."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


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
