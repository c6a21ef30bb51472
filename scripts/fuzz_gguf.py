"""Fuzz the GGUF reader, the model config and the vocabulary loader with mutations of real files.

    python scripts/fuzz_gguf.py [--seconds 60] [--seed N] [--engine atheris|random] [FILES...]

Every input must either load (GGUFFile -> ModelConfig -> Model wiring -> Tokenizer) or raise a
clean LLMStreamError; anything else is a finding, saved under tests/fuzz_regressions/ (replayed by
tests/test_fuzz_gguf.py from then on). With atheris installed (pip install atheris) mutations are
coverage-guided; otherwise (or with --engine random) a seeded mutator that aims at the header and
metadata (counts, lengths, types, offsets, truncation) is used. `make fuzz` runs it.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
REGRESSIONS = ROOT / "tests" / "fuzz_regressions"
SEEDS = ["reference/llama-gqa-Q4_0.gguf", "reference/phi2-Q4_K_M.gguf",
         "reference/llama-gqa-Q8_0.candle.gguf"]


def check(data: bytes, path: Path) -> None:
    """Load data as a model file: returns, or raises LLMStreamError; anything else is a bug."""
    from llmstream.engine import Model
    from llmstream.errors import LLMStreamError
    from llmstream.gguf import GGUFFile
    from llmstream.tokenizer import Tokenizer

    path.write_bytes(data)
    try:
        with GGUFFile(path) as gf:
            meta = gf.metadata
            if "tokenizer.ggml.model" in meta:
                Tokenizer.from_gguf_metadata(meta)
        config = SHARED / "reference" / "llama-gqa.config.json"
        with Model(path, config_path=str(config), ctx_size=64):
            pass
    except LLMStreamError:
        pass


# values a hostile file may put under any metadata key (wrong type, wrong shape, out of range)
ODD_VALUES = ["abc", "", [1, 2, 3], [4, 4, 4], [], [[1]], 0, -1, 2 ** 40, 2 ** 63, 3.5, 1e-45,
              float("nan"), float("inf"), -0.0, True, None, b"\xff", ["x"] * 3, [1.5, "a"]]


def check_metadata(gf, rng: random.Random, n_keys: int = 2) -> None:
    """Structured: the file's metadata with n_keys values replaced by odd ones, through the model
    config and the vocabulary loader (no file written: the mutation reaches the checks directly)."""
    from types import SimpleNamespace

    from llmstream.errors import LLMStreamError
    from llmstream.models.config import config_from_gguf
    from llmstream.tokenizer import Tokenizer

    meta = dict(gf.metadata)
    for key in rng.sample(sorted(meta), min(n_keys, len(meta))):
        v = rng.choice(ODD_VALUES)
        if v is None:
            del meta[key]
        else:
            meta[key] = v
    fake = SimpleNamespace(metadata=meta, tensors=gf.tensors, path=gf.path)
    for load in (lambda: config_from_gguf(fake), lambda: Tokenizer.from_gguf_metadata(meta)):
        try:
            load()
        except LLMStreamError:
            pass


def header_size(data: bytes) -> int:
    """Where the tensor data starts (mutations aim before it); the whole file if unknown."""
    from llmstream.gguf import GGUFFile
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        try:
            with GGUFFile(f.name) as gf:
                return gf.data_offset
        except Exception:
            return len(data)


def mutate(data: bytes, hdr: int, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        pos = rng.randrange(min(hdr, len(b))) if b else 0
        if op == 0:                                   # flip a byte
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:                                 # an interesting u64 (counts, lengths, offsets)
            v = rng.choice([0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 63, 2 ** 64 - 1, len(b), -1 & 0xFFFF])
            b[pos:pos + 8] = struct.pack("<Q", v & (2 ** 64 - 1))
        elif op == 2:                                 # an interesting u32 (a type id, a count)
            b[pos:pos + 4] = struct.pack("<I", rng.choice([0, 1, 4, 8, 9, 12, 13, 30, 255, 2 ** 31]))
        elif op == 3:                                 # truncate
            del b[rng.randrange(len(b)):]
        elif op == 4:                                 # duplicate a slice of the header
            n = rng.randint(1, 64)
            b[pos:pos] = b[pos:pos + n]
        elif op == 5:                                 # delete a few bytes
            del b[pos:pos + rng.randint(1, 16)]
        else:                                         # a float NaN / inf / 0 / negative
            b[pos:pos + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), 0.0, -1.0]))
    return bytes(b)


def save(data: bytes, err: BaseException) -> Path:
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    p = REGRESSIONS / f"crash-{hashlib.sha256(data).hexdigest()[:16]}.gguf"
    p.write_bytes(data)
    p.with_suffix(".txt").write_text("".join(traceback.format_exception(err)))
    return p


def run_random(seeds: list[bytes], seconds: float, seed: int, max_execs: int | None = None) -> dict:
    """Alternately: bytes mutated (the reader), and metadata values replaced (config, vocabulary)."""
    from llmstream.gguf import GGUFFile
    rng = random.Random(seed)
    hdrs = [header_size(s) for s in seeds]
    stats = {"execs": 0, "findings": []}
    t_end = time.monotonic() + seconds
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.gguf"
        opened = []
        for i, s in enumerate(seeds):
            p = Path(d) / f"seed{i}.gguf"
            p.write_bytes(s)
            opened.append(GGUFFile(p))
        while time.monotonic() < t_end and (max_execs is None or stats["execs"] < max_execs):
            i = rng.randrange(len(seeds))
            stats["execs"] += 1
            if stats["execs"] % 2:
                data = mutate(seeds[i], hdrs[i], rng)
                try:
                    check(data, path)
                except Exception as e:          # a finding: not an LLMStreamError
                    stats["findings"].append((save(data, e), f"{type(e).__name__}: {e}"))
            else:
                state = rng.getstate()
                try:
                    check_metadata(opened[i], rng)
                except Exception as e:
                    note = f"metadata of seed {i} mutated by random.Random state {hash(state)}"
                    stats["findings"].append((note, f"{type(e).__name__}: {e}"))
        for gf in opened:
            gf.close()
    return stats


def run_atheris(seeds: list[bytes], seconds: float) -> None:
    import atheris
    with atheris.instrument_imports(include=["llmstream"]):   # coverage of the code under test
        import llmstream.engine  # noqa: F401
        import llmstream.gguf  # noqa: F401
        import llmstream.models.config  # noqa: F401
        import llmstream.tokenizer  # noqa: F401
    d = tempfile.mkdtemp()
    path = Path(d) / "fuzz.gguf"
    corpus = Path(d) / "corpus"
    corpus.mkdir()
    for i, s in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(s)

    def one(data: bytes):
        try:
            check(data, path)
        except Exception as e:
            save(data, e)
            raise

    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-max_len=4000000",
                   "-rss_limit_mb=4096", str(corpus)], one)
    atheris.Fuzz()


SHARED = Path(os.environ.get("LLMSTREAM_SHARED", ROOT.parent / "shared"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engine", choices=["atheris", "random"], default=None)
    p.add_argument("files", nargs="*", help=f"seed files (default: {', '.join(SEEDS)} in ../shared)")
    args = p.parse_args(argv)
    import logging
    logging.disable(logging.WARNING)     # every mutated vocabulary warns; findings are printed
    files = [Path(f) for f in args.files] or [SHARED / s for s in SEEDS]
    seeds = [f.read_bytes() for f in files]
    engine = args.engine
    if engine is None:
        try:
            import atheris  # noqa: F401
            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "atheris":
        run_atheris(seeds, args.seconds)
        return 0
    stats = run_random(seeds, args.seconds, args.seed)
    print(f"fuzz_gguf: {stats['execs']} inputs in {args.seconds:.0f} s, "
          f"{len(stats['findings'])} findings", file=sys.stderr)
    for where, what in stats["findings"]:
        where = where.relative_to(ROOT) if isinstance(where, Path) else where
        print(f"  {where}: {what}", file=sys.stderr)
    return 1 if stats["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
