"""Command line: `llmstream logits | generate | tokenize | serve | bench | demo`."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .errors import LLMStreamError


def _int_list(s: str) -> list[int]:
    try:
        return [int(t) for t in s.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got {s!r}") from None


def cmd_logits(args) -> int:
    """Evaluate --tokens from an empty cache (the first --prefill in one batch, the rest one at a
    time) and save float32 logits [n_tokens, n_vocab] to --out."""
    from .engine import Model

    tokens = args.tokens
    if not tokens:
        raise LLMStreamError("--tokens is empty; give at least one token id")
    n_prefill = len(tokens) if args.prefill is None else args.prefill
    if not 1 <= n_prefill <= len(tokens):
        raise LLMStreamError(f"--prefill must be between 1 and {len(tokens)}, got {n_prefill}")
    with Model(args.model, config_path=args.config, ctx_size=args.ctx_size,
               threads=args.threads) as m:
        if len(tokens) > m.n_ctx:
            raise LLMStreamError(f"{len(tokens)} tokens exceed the context size {m.n_ctx}; "
                                 "raise --ctx-size")
        out = np.empty((len(tokens), m.n_vocab), np.float32)
        out[:n_prefill] = m.prefill(tokens[:n_prefill], all_logits=True)
        for i in range(n_prefill, len(tokens)):
            out[i] = m.decode_step(tokens[i])
    np.save(args.out, out)
    print(f"saved logits {out.shape} to {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmstream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    lg = sub.add_parser("logits", help="evaluate token ids and save every position's logits")
    lg.add_argument("--model", required=True, help="GGUF model file")
    lg.add_argument("--config", help="Hugging Face config.json (candle-layout files)")
    lg.add_argument("--tokens", required=True, type=_int_list, help="comma-separated token ids")
    lg.add_argument("--prefill", type=int, help="how many tokens go in the first batch (default all)")
    lg.add_argument("--out", required=True, help="output .npy file")
    lg.add_argument("--ctx-size", type=int, help="KV cache capacity (default: the model's context)")
    lg.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    lg.set_defaults(func=cmd_logits)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LLMStreamError as e:
        print(f"llmstream: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
