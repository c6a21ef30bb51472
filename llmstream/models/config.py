"""ModelConfig: every hyper-parameter an architecture needs, filled in one place from either GGUF
metadata (llama.cpp layout) or a Hugging Face config.json (candle tensor-tools layout, which carries
no metadata), and checked against the tensor shapes.

Name maps: one per file layout, from the engine's canonical names to the file's tensor names.
Canonical names use `{i}` for the layer index.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..errors import ModelError
from ..gguf import GGUFFile

ARCHES = ("llama", "phi2")
# no dimension, count or context length of a real model comes near this (2^24)
MAX_DIM = 1 << 24

# --- name maps ---------------------------------------------------------------------------------
LLAMA_CPP_NAMES = {
    "tok_embd": "token_embd.weight",
    "out_norm": "output_norm.weight", "out_norm_b": "output_norm.bias",
    "output": "output.weight", "output_b": "output.bias",
    "attn_norm": "blk.{i}.attn_norm.weight", "attn_norm_b": "blk.{i}.attn_norm.bias",
    "wqkv": "blk.{i}.attn_qkv.weight", "bqkv": "blk.{i}.attn_qkv.bias",
    "wq": "blk.{i}.attn_q.weight", "wk": "blk.{i}.attn_k.weight", "wv": "blk.{i}.attn_v.weight",
    "bq": "blk.{i}.attn_q.bias", "bk": "blk.{i}.attn_k.bias", "bv": "blk.{i}.attn_v.bias",
    "wo": "blk.{i}.attn_output.weight", "bo": "blk.{i}.attn_output.bias",
    "ffn_norm": "blk.{i}.ffn_norm.weight",
    "w_gate": "blk.{i}.ffn_gate.weight", "w_up": "blk.{i}.ffn_up.weight",
    "w_down": "blk.{i}.ffn_down.weight",
    "b_up": "blk.{i}.ffn_up.bias", "b_down": "blk.{i}.ffn_down.bias",
    "rope_freqs": "rope_freqs.weight",  # Llama 3.1+: per-pair RoPE frequency factors (n_rot/2,)
}

# RoPE scalings the engine computes ({arch}.rope.scaling.type); any other is refused at load.
# Llama 3's "llama3" scaling needs no type: its files carry the factors as rope_freqs.weight.
ROPE_SCALINGS = ("none", "linear")

CANDLE_MISTRAL_NAMES = {
    "tok_embd": "model.embed_tokens.weight",
    "out_norm": "model.norm.weight",
    "output": "lm_head.weight",
    "attn_norm": "model.layers.{i}.input_layernorm.weight",
    "wq": "model.layers.{i}.self_attn.q_proj.weight",
    "wk": "model.layers.{i}.self_attn.k_proj.weight",
    "wv": "model.layers.{i}.self_attn.v_proj.weight",
    "wo": "model.layers.{i}.self_attn.o_proj.weight",
    "ffn_norm": "model.layers.{i}.post_attention_layernorm.weight",
    "w_gate": "model.layers.{i}.mlp.gate_proj.weight",
    "w_up": "model.layers.{i}.mlp.up_proj.weight",
    "w_down": "model.layers.{i}.mlp.down_proj.weight",
}

CANDLE_PHI_NAMES = {
    "tok_embd": "transformer.embd.wte.weight",
    "out_norm": "lm_head.ln.weight", "out_norm_b": "lm_head.ln.bias",
    "output": "lm_head.linear.weight", "output_b": "lm_head.linear.bias",
    "attn_norm": "transformer.h.{i}.ln.weight", "attn_norm_b": "transformer.h.{i}.ln.bias",
    "wqkv": "transformer.h.{i}.mixer.Wqkv.weight", "bqkv": "transformer.h.{i}.mixer.Wqkv.bias",
    "wo": "transformer.h.{i}.mixer.out_proj.weight", "bo": "transformer.h.{i}.mixer.out_proj.bias",
    "w_up": "transformer.h.{i}.mlp.fc1.weight", "b_up": "transformer.h.{i}.mlp.fc1.bias",
    "w_down": "transformer.h.{i}.mlp.fc2.weight", "b_down": "transformer.h.{i}.mlp.fc2.bias",
}

# Published configs of the default candle models, used when no config.json is given or found.
PUBLISHED_HF_CONFIGS = {
    "phi2": {  # microsoft/phi-2
        "model_type": "phi", "vocab_size": 51200, "hidden_size": 2560, "intermediate_size": 10240,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "partial_rotary_factor": 0.4, "layer_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "hidden_act": "gelu_new",
    },
    "llama": {  # mistralai/Mistral-7B-v0.1
        "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 32768, "sliding_window": 4096, "hidden_act": "silu",
    },
}


@dataclass(frozen=True)
class ModelConfig:
    arch: str             # "llama" (llama, llama2, mistral) or "phi2"
    layout: str           # "llama.cpp" or "candle"
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int
    n_rot: int            # rotated dims per head (partial RoPE when < head_dim)
    rope_base: float
    norm_eps: float
    rope_neox: bool       # rotate-half pairs (i, i + n_rot/2) instead of interleaved (2i, 2i+1)
    sliding_window: int   # 0 = none
    name: str = ""
    rope_scaling: str = "none"        # one of ROPE_SCALINGS
    rope_scaling_factor: float = 1.0  # linear: positions divided by it (1 = no scaling)

    def __post_init__(self):
        """Every hyper-parameter has its type and a sane range (a hostile or broken file gets one
        clear error here, not a crash later). The RoPE scaling is one llmstream computes, never
        silently replaced by plain RoPE."""
        for name in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_ctx_train",
                     "n_rot", "sliding_window"):
            v = getattr(self, name)
            lo = 0 if name == "sliding_window" else 1
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_DIM:
                raise ModelError(f"{name} = {v!r} is invalid; it must be a whole number from {lo} "
                                 f"to {MAX_DIM}")
        for name in ("rope_base", "norm_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ModelError(f"{name} = {v!r} is invalid; it must be a finite number > 0")
        if self.norm_eps >= 1:
            raise ModelError(f"norm_eps = {self.norm_eps} is invalid; norm epsilons are small "
                             "(1e-6 .. 1e-5)")
        if self.n_embd % self.n_head or self.n_head % self.n_head_kv:
            raise ModelError(f"inconsistent heads: n_embd={self.n_embd}, n_head={self.n_head}, "
                             f"n_head_kv={self.n_head_kv} (n_embd must be a multiple of n_head, "
                             "n_head of n_head_kv)")
        if self.n_rot > self.head_dim or self.n_rot % 2:
            raise ModelError(f"rotary dims {self.n_rot} invalid for head_dim {self.head_dim}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ModelError(f"RoPE scaling type '{self.rope_scaling}' is not supported; llmstream "
                             f"supports {', '.join(ROPE_SCALINGS)} and Llama 3 frequency factors "
                             "(the rope_freqs.weight tensor of llama.cpp GGUF files)")
        f = self.rope_scaling_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and f > 0):
            raise ModelError(f"RoPE scaling factor {f!r} is invalid; it must be a finite number > 0")

    @property
    def rope_freq_scale(self) -> float:
        """What RoPE angles are multiplied by: 1 / the linear factor, 1 without scaling."""
        return 1.0 / self.rope_scaling_factor if self.rope_scaling == "linear" else 1.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_embd_kv(self) -> int:
        return self.head_dim * self.n_head_kv

    @property
    def names(self) -> Mapping[str, str]:
        if self.layout == "llama.cpp":
            return LLAMA_CPP_NAMES
        return CANDLE_PHI_NAMES if self.arch == "phi2" else CANDLE_MISTRAL_NAMES


def _new_config(source: str, **fields) -> ModelConfig:
    """ModelConfig(**fields); a value it refuses is reported with the file (or config) it came from."""
    try:
        return ModelConfig(**fields)
    except ModelError as e:
        raise ModelError(f"{source}: {e}") from None


def _num(meta: Mapping[str, Any], key: str, path: str, default=None, kind=int):
    """The number under GGUF key `key`, strictly of `kind` (int: a whole number; float: any real
    number). Some files store a per-layer array where one value is meant (head_count_kv): all
    entries equal is that value, anything else is refused."""
    v = meta.get(key, default)
    if v is None:
        raise ModelError(f"{path}: GGUF metadata key '{key}' is missing; the file is incomplete — "
                         "re-convert it with a current llama.cpp")
    return _as_number(v, f"{path}: GGUF metadata key '{key}'", kind)


def _as_number(v: Any, what: str, kind=int):
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = list(np.asarray(v).reshape(-1)) if not isinstance(v, (list, tuple)) else list(v)
        if not vals or any(x != vals[0] for x in vals):
            raise ModelError(f"{what} holds a list of different values ({_short(vals)}); "
                             "llmstream needs one value for every layer")
        v = vals[0]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ModelError(f"{what} should be a number, got {type(v).__name__} {_short(v)}")
    if kind is int:
        if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
            raise ModelError(f"{what} should be a whole number, got {v!r}")
        return int(v)
    if not math.isfinite(v):
        raise ModelError(f"{what} = {v} is not a finite number")
    return float(v)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _rope_scaling_from_gguf(meta: Mapping[str, Any], a: str, path: str) -> tuple[Any, float]:
    """(type, factor) from `{a}.rope.scaling.*`, read as llama.cpp reads them: the type defaults to
    linear, the factor to `{a}.rope.scale_linear` (the older key), 0 means "not set" (1), and
    `none` means no scaling whatever the factor. ModelConfig refuses the types it does not
    compute (yarn, longrope, ...) and bad factors."""
    kind = meta.get(f"{a}.rope.scaling.type", "linear")
    factor = meta.get(f"{a}.rope.scaling.factor")
    if factor is None:
        factor = meta.get(f"{a}.rope.scale_linear", 0.0)
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise ModelError(f"{path}: GGUF key '{a}.rope.scaling.factor' should be a number, "
                         f"got {factor!r}") from None
    if kind == "none" or factor == 0.0:
        return "none", 1.0
    return kind, factor


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    """Hyper-parameters of a llama.cpp-layout file, from its `<arch>.*` metadata keys."""
    meta, path = gf.metadata, gf.path
    arch = meta.get("general.architecture")
    if arch not in ARCHES:
        raise ModelError(f"{path}: architecture '{arch}' is not supported; llmstream runs "
                         "llama (Llama 2, Mistral and their fine-tunes) and phi2 models")
    a = arch
    n_embd = _num(meta, f"{a}.embedding_length", path)
    n_head = _num(meta, f"{a}.attention.head_count", path)
    n_head_kv = _num(meta, f"{a}.attention.head_count_kv", path, n_head)
    head_dim = n_embd // n_head if n_head > 0 else 0
    eps_key = "layer_norm_rms_epsilon" if arch == "llama" else "layer_norm_epsilon"
    eps = _num(meta, f"{a}.attention.{eps_key}", path, kind=float)
    emb = gf.tensors.get("token_embd.weight")
    if emb is None:
        raise ModelError(f"{path}: tensor 'token_embd.weight' is missing")
    n_vocab = emb.shape[1]
    rope_scaling, rope_factor = _rope_scaling_from_gguf(meta, a, path)
    freq_base = _num(meta, f"{a}.rope.freq_base", path, 10000.0, kind=float)
    if not math.isfinite(freq_base) or freq_base <= 0.0:
        raise ModelError(f"{path}: '{a}.rope.freq_base' = {freq_base} is invalid; it must be a "
                         "finite number > 0")
    return _checked(gf, _new_config(
        path,
        arch=arch, layout="llama.cpp", n_vocab=n_vocab, n_embd=n_embd,
        n_layer=_num(meta, f"{a}.block_count", path), n_head=n_head, n_head_kv=n_head_kv,
        n_ff=_num(meta, f"{a}.feed_forward_length", path),
        n_ctx_train=_num(meta, f"{a}.context_length", path, 2048),
        n_rot=_num(meta, f"{a}.rope.dimension_count", path, head_dim),
        rope_base=freq_base, norm_eps=eps,
        rope_neox=(arch == "phi2"),
        sliding_window=0, name=str(meta.get("general.name", "")),
        rope_scaling=rope_scaling, rope_scaling_factor=rope_factor,
    ))


def detect_candle_arch(gf: GGUFFile) -> str | None:
    if "transformer.embd.wte.weight" in gf.tensors:
        return "phi2"
    if "model.embed_tokens.weight" in gf.tensors:
        return "llama"
    return None


def config_from_hf(gf: GGUFFile, arch: str, hf: Mapping[str, Any], source: str) -> ModelConfig:
    """Hyper-parameters of a candle-layout file from a Hugging Face config.json dict."""
    def get(*keys, default=None, kind=int):
        for k in keys:
            if k in hf and hf[k] is not None:
                return _as_number(hf[k], f"{source}: config key '{k}'", kind)
        if default is None:
            raise ModelError(f"{source}: config key '{keys[0]}' is missing")
        return default

    n_embd = get("hidden_size", "n_embd")
    n_head = get("num_attention_heads", "n_head")
    head_dim = n_embd // n_head if n_head > 0 else 0
    if arch == "phi2":
        n_rot = get("rotary_dim", default=0) or round(
            get("partial_rotary_factor", default=0.4, kind=float) * head_dim)
        eps = get("layer_norm_eps", "layer_norm_epsilon", default=1e-5, kind=float)
        window = 0
    else:
        n_rot = head_dim
        eps = get("rms_norm_eps", default=1e-5, kind=float)
        window = get("sliding_window", default=0)
    rope_scaling, rope_factor = _rope_scaling_from_hf(hf.get("rope_scaling"), source)
    return _checked(gf, _new_config(
        source,
        arch=arch, layout="candle", n_vocab=get("vocab_size"), n_embd=n_embd,
        n_layer=get("num_hidden_layers", "n_layer"), n_head=n_head,
        n_head_kv=get("num_key_value_heads", default=0) or n_head,
        n_ff=get("intermediate_size", "n_inner", default=4 * n_embd),
        n_ctx_train=get("max_position_embeddings", "n_positions", default=2048),
        n_rot=n_rot, rope_base=get("rope_theta", default=10000.0, kind=float), norm_eps=eps,
        rope_neox=True, sliding_window=window, name=str(hf.get("_name_or_path", "")),
        rope_scaling=rope_scaling, rope_scaling_factor=rope_factor,
    ), source)


def _rope_scaling_from_hf(rs: Any, source: str) -> tuple[Any, Any]:
    """(type, factor) from a config.json's `rope_scaling` ({"type" or "rope_type", "factor"});
    ModelConfig refuses what it does not compute."""
    if rs is None:
        return "none", 1.0
    if not isinstance(rs, dict):
        raise ModelError(f"{source}: 'rope_scaling' should be an object, got {rs!r}")
    kind = rs.get("rope_type", rs.get("type", "default"))
    return ("none", 1.0) if kind == "default" else (kind, rs.get("factor"))


def load_hf_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the config.json ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: not valid JSON ({e}); pass the model's Hugging Face config.json") from None
    if not isinstance(cfg, dict):
        raise ModelError(f"{path}: expected a JSON object (a Hugging Face config.json)")
    return cfg


def load_config(gf: GGUFFile, config_path: str | None = None) -> ModelConfig:
    """The one place a ModelConfig is made: llama.cpp metadata when the file has it, else a
    candle layout recognised from its tensor names, with config.json (given, or beside the file,
    or the published config of phi-2 / Mistral-7B-v0.1)."""
    if "general.architecture" in gf.metadata and config_path is None:
        return config_from_gguf(gf)
    arch = detect_candle_arch(gf)
    if arch is None:
        if "general.architecture" in gf.metadata:
            return config_from_gguf(gf)
        raise ModelError(f"{gf.path}: no 'general.architecture' metadata and no tensor names of a "
                         "known layout (llama.cpp 'token_embd.weight', candle "
                         "'model.embed_tokens.weight' or 'transformer.embd.wte.weight'); "
                         "llmstream cannot tell what model this is")
    if config_path is None:
        beside = os.path.join(os.path.dirname(os.path.abspath(gf.path)), "config.json")
        config_path = beside if os.path.exists(beside) else None
    if config_path is not None:
        return config_from_hf(gf, arch, load_hf_config(config_path), config_path)
    return config_from_hf(gf, arch, PUBLISHED_HF_CONFIGS[arch],
                          f"published {'phi-2' if arch == 'phi2' else 'Mistral-7B-v0.1'} config")


def _checked(gf: GGUFFile, c: ModelConfig, source: str | None = None) -> ModelConfig:
    """Every tensor the architecture needs exists with the shape the config implies."""
    src = f" (hyper-parameters from {source})" if source else ""
    hint = ("; pass the model's config.json with --config" if c.layout == "candle"
            else "; the file's metadata does not match its tensors")

    def bad(msg):
        raise ModelError(f"{gf.path}: {msg}{src}{hint}")

    if c.n_head <= 0 or c.n_embd % c.n_head or c.n_head_kv <= 0 or c.n_head % c.n_head_kv:
        bad(f"inconsistent heads: n_embd={c.n_embd}, n_head={c.n_head}, n_head_kv={c.n_head_kv}")
    if c.n_rot <= 0 or c.n_rot > c.head_dim or c.n_rot % 2:
        bad(f"rotary dims {c.n_rot} invalid for head_dim {c.head_dim}")
    names = c.names
    E, KV, F, V = c.n_embd, c.n_embd_kv, c.n_ff, c.n_vocab

    def expect(key, shape, layer=None, optional=False):
        name = names[key].format(i=layer)
        info = gf.tensors.get(name)
        if info is None:
            if optional:
                return False
            bad(f"tensor '{name}' is missing")
        if tuple(info.shape) != tuple(shape):
            bad(f"tensor '{name}' has shape {list(info.shape)}, expected {list(shape)}")
        return True

    expect("tok_embd", (E, V))
    expect("out_norm", (E,))
    if "output" in names:
        expect("output", (E, V), optional=True)
    for i in range(c.n_layer):
        expect("attn_norm", (E,), i)
        if not ("wqkv" in names and expect("wqkv", (E, E + 2 * KV), i, optional=True)):
            expect("wq", (E, E), i)
            expect("wk", (E, KV), i)
            expect("wv", (E, KV), i)
        expect("wo", (E, E), i)
        if c.arch == "llama":
            expect("ffn_norm", (E,), i)
            expect("w_gate", (E, F), i)
        expect("w_up", (E, F), i)
        expect("w_down", (F, E), i)
    if c.arch == "llama" and "rope_freqs" in names:
        expect("rope_freqs", (c.n_rot // 2,), optional=True)
    extra = names["attn_norm"].format(i=c.n_layer)
    if extra in gf.tensors:
        bad(f"the file has more layers than {c.n_layer} ('{extra}' exists)")
    return c
