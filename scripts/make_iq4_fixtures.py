"""Write the IQ4_NL / IQ4_XS test fixtures of tests/data/iq4/ and llama.cpp's logits for them.

The weights are quantized by llama.cpp, not by llmstream: a tiny random-weight llama GGUF in F16
(make_rope_fixtures.write_model: 2 layers, n_embd 256, 4 query heads of 64 dims, 2 KV heads, FFN
512, q/k at the plain 1/sqrt(n) scale, its own output matrix, the first 300 pieces of the Llama SentencePiece vocabulary), written to
a temporary folder, is quantized by llama-cpp-python's `llama_model_quantize` with the file types
LLAMA_FTYPE_MOSTLY_IQ4_NL and LLAMA_FTYPE_MOSTLY_IQ4_XS. Every row length is a multiple of 256 (llama.cpp
gives rows that are not another type), the model has GQA 2 (< 4: llama.cpp's mixing rules would
give attn_v Q5_K) and 2 layers (no "first eighth" ffn_down exception), so every layer matrix and the
token embedding are in the file's type; output.weight gets Q6_K, as in llama.cpp's own IQ4 files.
The script checks those types with `gguf` and stops if llama.cpp chose otherwise.

The logits are llama.cpp's too: a fixed sequence of N_TOKENS tokens (BOS first) evaluated from an
empty cache in one batch, every position's logits, saved as float16 in `<name>.npz` (`tokens` int32,
`logits` float16 [N_TOKENS, n_vocab]). CI has no llama-cpp-python: tests/test_iq4.py reads the
committed files.

    .venv/bin/python scripts/make_iq4_fixtures.py [--out tests/data/iq4] [--vocab PATH]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_rope_fixtures import (fixed_tokens, fixture_args, save_logits, write_manifest,  # noqa: E402
                                write_model)

DIMS = dict(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, n_layer=2)
N_TOKENS = 96
# q/k at the usual 1/sqrt(n) scale, not the rope fixtures' x3: attention that peaky amplifies the
# small arithmetic differences of quantized activations (e.g. llama.cpp's AVX2 Q8_0 quantizer rounds
# x*(127/max) to even, its reference and llmstream x/(max/127) away from zero) to 0.13 sigma at most
# even with Q8_0 weights (measured); at x1 the differences are those of the ../shared conformance
# cases (Q8_0: rms 0.011, max 0.05).
SPEC = {"freq_base": 10000.0, "seed": 20, "qk_scale": 1.0}
# fixture name -> (llama.cpp file type name, the ggml type of every layer matrix and token_embd)
FIXTURES = {"llama-iq4_nl": ("LLAMA_FTYPE_MOSTLY_IQ4_NL", "IQ4_NL"),
            "llama-iq4_xs": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", "IQ4_XS")}
OUTPUT_TYPE = "Q6_K"


def quantize(src: Path, dst: Path, ftype_name: str):
    """llama.cpp's quantizer: src (F16) -> dst in the file type `ftype_name`."""
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({ftype_name}) failed with {rc}")


def tensor_types(path: Path) -> dict[str, str]:
    import gguf
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def check_types(path: Path, want: str) -> dict[str, str]:
    """Every 2-D weight but output.weight is `want`, output.weight is OUTPUT_TYPE; else stop."""
    types = tensor_types(path)
    bad = {n: t for n, t in types.items()
           if n.endswith(".weight") and "norm" not in n
           and t != (OUTPUT_TYPE if n == "output.weight" else want)}
    if bad:
        raise SystemExit(f"{path}: llama.cpp did not quantize as expected: {bad}")
    return types


def main():
    args = fixture_args(__doc__, "iq4")
    tokens = fixed_tokens(2025, N_TOKENS)
    manifest = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "llama-f16.gguf"
        write_model(src, SPEC, args.vocab, DIMS, output=True)
        for name, (ftype, want) in FIXTURES.items():
            path = args.out / f"{name}.gguf"
            quantize(src, path, ftype)
            types = check_types(path, want)
            logits = save_logits(path, tokens)
            counts = {t: sum(v == t for v in types.values()) for t in sorted(set(types.values()))}
            manifest[name] = {"llama_ftype": ftype, "type": want, "tensor_types": counts}
            print(f"{name}: {path.stat().st_size} B, tensors {counts}, logits std {logits.std():.4f}")
    write_manifest(args.out, "make_iq4_fixtures.py", N_TOKENS, manifest, dims=DIMS)


if __name__ == "__main__":
    main()
