"""Write the RoPE-scaling test fixtures of tests/data/rope/ and llama.cpp's logits for them.

Each fixture is a tiny random-weight llama GGUF (F16 weights, 2 layers, n_embd 64, 2 query heads of
32 dims, 1 KV head, FFN 128, tied output, the first 300 pieces of the Llama SentencePiece vocabulary
so llama.cpp accepts the file), written with the `gguf` package:

- `llama-rope-freqs.gguf`: Llama 3.1-style `rope_freqs.weight` (the "llama3" per-pair frequency
  factors, computed as convert_hf_to_gguf.py does, with an original context of 256 so that every
  kind of factor — 1, 8 and the smooth ones between — acts within the sequence), freq_base 500000;
- `llama-rope-linear.gguf`: `llama.rope.scaling.type = linear`, factor 4, freq_base 1e6 (CodeLlama's).

The logits come from llama.cpp itself (llama-cpp-python, not our code): a fixed sequence of
N_TOKENS tokens (BOS first) evaluated from an empty cache in one batch, every position's logits,
saved as float16 in `<name>.npz` (`tokens` int32, `logits` float16 [N_TOKENS, n_vocab]).
CI has no llama-cpp-python: tests/test_rope.py reads the committed files.

    .venv/bin/python scripts/make_rope_fixtures.py [--out tests/data/rope] [--vocab PATH]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 300, 64, 2, 1, 128, 2
N_TOKENS = 200
N_CTX_TRAIN = 4096

FIXTURES = {
    "llama-rope-freqs": {"freq_base": 500000.0, "llama3": {
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256}, "seed": 3},
    "llama-rope-linear": {"freq_base": 1e6, "linear": 4.0, "seed": 4},
}


def llama3_factors(base: float, dim: int, factor: float, low_freq_factor: float,
                   high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """The per-pair factors Llama 3.1's "llama3" rope scaling divides the angles by (as
    convert_hf_to_gguf.py writes them into rope_freqs.weight)."""
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = ((original_max_position_embeddings / wavelen - low_freq_factor)
                      / (high_freq_factor - low_freq_factor))
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


def vocab(path: Path):
    """The first N_VOCAB pieces of a SentencePiece vocab-only GGUF: tokens, scores, types."""
    import gguf
    r = gguf.GGUFReader(str(path))
    f = r.fields

    def arr(name):
        fld = f[name]
        return [fld.parts[i] for i in fld.data[:N_VOCAB]]

    tokens = [bytes(p).decode("utf-8") for p in arr("tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in arr("tokenizer.ggml.scores")]
    types = [int(p[0]) for p in arr("tokenizer.ggml.token_type")]
    return tokens, scores, types


DIMS = dict(n_embd=N_EMBD, n_head=N_HEAD, n_head_kv=N_HEAD_KV, n_ff=N_FF, n_layer=N_LAYER)


def write_model(path: Path, spec: dict, vocab_path: Path, dims: dict = DIMS, output: bool = False):
    """A random-weight llama GGUF of shape `dims` (F16 matrices, F32 norms); the output matrix is
    the token embedding (tied) unless `output`, then its own F16 `output.weight`."""
    import gguf
    rng = np.random.default_rng(spec["seed"])
    n_embd, n_ff, n_layer = dims["n_embd"], dims["n_ff"], dims["n_layer"]
    head_dim = n_embd // dims["n_head"]
    wr = gguf.GGUFWriter(str(path), "llama")
    wr.add_name(path.stem)
    wr.add_context_length(N_CTX_TRAIN)
    wr.add_embedding_length(n_embd)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(n_ff)
    wr.add_head_count(dims["n_head"])
    wr.add_head_count_kv(dims["n_head_kv"])
    wr.add_rope_dimension_count(head_dim)
    wr.add_rope_freq_base(spec["freq_base"])
    wr.add_layer_norm_rms_eps(1e-5)
    if "linear" in spec:
        wr.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        wr.add_rope_scaling_factor(spec["linear"])
    tokens, scores, types = vocab(vocab_path)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(1)
    wr.add_eos_token_id(2)
    wr.add_unk_token_id(0)

    def mat(n_out, n_in, scale=1.0):
        return (rng.standard_normal((n_out, n_in)) * scale / math.sqrt(n_in)).astype(np.float16)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    kv = head_dim * dims["n_head_kv"]
    wr.add_tensor("token_embd.weight", (rng.standard_normal((N_VOCAB, n_embd))).astype(np.float16))
    wr.add_tensor("output_norm.weight", norm(n_embd))
    if "llama3" in spec:
        wr.add_tensor("rope_freqs.weight", llama3_factors(spec["freq_base"], head_dim, **spec["llama3"]))
    for i in range(n_layer):
        p = f"blk.{i}."
        wr.add_tensor(p + "attn_norm.weight", norm(n_embd))
        # q/k large enough that attention is far from uniform: the rotation then matters
        wr.add_tensor(p + "attn_q.weight", mat(n_embd, n_embd, spec.get("qk_scale", 3.0)))
        wr.add_tensor(p + "attn_k.weight", mat(kv, n_embd, spec.get("qk_scale", 3.0)))
        wr.add_tensor(p + "attn_v.weight", mat(kv, n_embd))
        wr.add_tensor(p + "attn_output.weight", mat(n_embd, n_embd))
        wr.add_tensor(p + "ffn_norm.weight", norm(n_embd))
        wr.add_tensor(p + "ffn_gate.weight", mat(n_ff, n_embd))
        wr.add_tensor(p + "ffn_up.weight", mat(n_ff, n_embd))
        wr.add_tensor(p + "ffn_down.weight", mat(n_embd, n_ff))
    if output:
        wr.add_tensor("output.weight", mat(N_VOCAB, n_embd))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def llama_cpp_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    """Every position's logits from llama.cpp, the whole sequence in one batch."""
    import llama_cpp
    n = len(tokens)
    llm = llama_cpp.Llama(str(path), n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True,
                          flash_attn=False, n_threads=2, verbose=False)
    try:
        llm.eval(tokens.tolist())
        return np.array(llm.scores[:n], dtype=np.float32)
    finally:
        llm.close()


def fixture_args(doc: str, subdir: str) -> argparse.Namespace:
    """The --out (default tests/data/<subdir>, created) and --vocab arguments of a fixture script."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / subdir)
    ap.add_argument("--vocab", type=Path,
                    default=ROOT.parent / "shared" / "vocab" / "ggml-vocab-llama-spm.gguf")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def fixed_tokens(seed: int, n: int) -> np.ndarray:
    """BOS, then n - 1 random ids past the special tokens (int32)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([[1], rng.integers(3, N_VOCAB, n - 1)]).astype(np.int32)


def save_logits(path: Path, tokens: np.ndarray) -> np.ndarray:
    """llama.cpp's logits of the model `path` for `tokens`, saved beside it as <stem>.npz (float16)."""
    logits = llama_cpp_logits(path, tokens)
    np.savez_compressed(path.with_suffix(".npz"), tokens=tokens, logits=logits.astype(np.float16))
    return logits


def write_manifest(out: Path, script: str, n_tokens: int, fixtures: dict, **extra):
    import llama_cpp
    (out / "MANIFEST.json").write_text(json.dumps(
        {"made_by": f"scripts/{script}, llama-cpp-python {llama_cpp.__version__}",
         "n_tokens": n_tokens, **extra, "fixtures": fixtures}, indent=1) + "\n")


def main():
    args = fixture_args(__doc__, "rope")
    tokens = fixed_tokens(2024, N_TOKENS)
    manifest = {}
    for name, spec in FIXTURES.items():
        path = args.out / f"{name}.gguf"
        write_model(path, spec, args.vocab)
        logits = save_logits(path, tokens)
        manifest[name] = {k: v for k, v in spec.items() if k != "seed"}
        print(f"{name}: {path.stat().st_size} B, logits std {logits.std():.4f}")
    write_manifest(args.out, "make_rope_fixtures.py", N_TOKENS, manifest)


if __name__ == "__main__":
    main()
