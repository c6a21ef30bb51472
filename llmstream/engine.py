"""Model + KV cache: `prefill(tokens) -> logits`, `decode_step(token) -> logits`.

Weights stay in the mmap'd GGUF in their quantized form (`Linear` holds a zero-copy view); every
buffer a forward pass writes is made once per model (`Workspace`) and the KV cache once per
sequence, so decoding allocates nothing. The per-family forward passes live in `models/`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import _ops
from .errors import LLMStreamError, ModelError
from .gguf import GGML_TYPES, GGUFFile
from .models import llama, phi2
from .models.config import ModelConfig, load_config

ARCHITECTURES = {"llama": llama, "phi2": phi2}
# Default KV capacity when no --ctx-size is given: a model trained on 32k tokens would otherwise
# reserve gigabytes of cache up front (llama.cpp defaults to 4096 too).
DEFAULT_MAX_CTX = 4096


class ContextFullError(LLMStreamError):
    """The KV cache cannot hold more tokens."""


@dataclass(frozen=True)
class Linear:
    """y = x @ W.T (+ b): W (n_out, n_in) as raw rows of `type`, used in place from the mmap."""
    w: np.ndarray          # uint8 (n_out, row_bytes)
    type: int
    n_in: int
    n_out: int
    b: np.ndarray | None = None

    def __call__(self, x: np.ndarray, y: np.ndarray, xq: np.ndarray) -> np.ndarray:
        _ops.matmul(self.w, self.type, x, y, xq)
        if self.b is not None:
            y += self.b
        return y

    def rows(self, start: int, stop: int, b: np.ndarray | None = None) -> "Linear":
        """Output rows start..stop as their own Linear (a view: splits a fused QKV for free)."""
        return Linear(self.w[start:stop], self.type, self.n_in, stop - start,
                      None if b is None else b[start:stop])


class Weights:
    """The tensors of one model, fetched through its layout's name map."""

    def __init__(self, gf: GGUFFile, cfg: ModelConfig):
        self.gf, self.names = gf, cfg.names

    def name(self, key: str, layer: int | None = None) -> str:
        return self.names[key].format(i=layer)

    def has(self, key: str, layer: int | None = None) -> bool:
        return key in self.names and self.name(key, layer) in self.gf.tensors

    def vector(self, key: str, layer: int | None = None) -> np.ndarray | None:
        """A 1-D f32 tensor (norm weight or bias), or None when the file has none."""
        if not self.has(key, layer):
            return None
        name = self.name(key, layer)
        info = self.gf.tensors[name]
        if info.type_name == "F32":
            return self.gf.tensor(name).reshape(-1)
        buf = np.empty(info.shape[0], np.float32)  # tiny f16/bf16 vectors: converted once
        _ops.get_rows(self.gf.raw(name), info.type, np.zeros(1, np.int32), buf.reshape(1, -1))
        return buf

    def linear(self, key: str, layer: int | None = None, bias: str | None = None) -> Linear:
        name = self.name(key, layer)
        info = self.gf.tensors[name]
        if info.type not in GGML_TYPES or GGML_TYPES[info.type][0] in ("Q8_1", "Q8_K"):
            raise ModelError(f"{self.gf.path}: tensor '{name}' has type {info.type_name}, "
                             "which cannot hold weights")
        b = self.vector(bias, layer) if bias else None
        return Linear(self.gf.raw(name), info.type, info.shape[0], info.n_rows, b)


class Workspace:
    """Every activation buffer of a forward pass over up to n_batch tokens, made once."""

    def __init__(self, cfg: ModelConfig, n_batch: int, n_ctx: int, linears: list[Linear],
                 threads: int):
        B, E, KV, F = n_batch, cfg.n_embd, cfg.n_embd_kv, cfg.n_ff
        z = lambda *shape: np.zeros(shape, np.float32)
        self.x, self.h, self.att, self.o = z(B, E), z(B, E), z(B, E), z(B, E)
        self.q, self.k, self.v = z(B, E), z(B, KV), z(B, KV)
        self.f1, self.f2 = z(B, F), z(B, F)
        self.logits = z(1, cfg.n_vocab)
        self.ids = np.zeros(B, np.int32)
        # four regions: matmuls fed by the same activations but with different vec_dot types
        # (llama_layer: q/k/v; phi2_layer: q/k/v/fc1) each get their own converted copy
        xq_bytes = max(_ops.vec_dot_row_bytes(l.type, l.n_in) for l in linears) * B
        self.xq = np.zeros(4 * xq_bytes, np.uint8)
        threads = max(1, threads)
        self.scratch = z(threads, n_ctx + 2 * cfg.head_dim)
        self.q16 = np.zeros((threads, cfg.head_dim), np.uint16)


class KVCache:
    """Keys and values of every layer for up to n_ctx positions, stored as f16 like llama.cpp."""

    def __init__(self, cfg: ModelConfig, n_ctx: int):
        self.n_ctx = n_ctx
        self.k = [np.zeros((n_ctx, cfg.n_embd_kv), np.uint16) for _ in range(cfg.n_layer)]
        self.v = [np.zeros((n_ctx, cfg.n_embd_kv), np.uint16) for _ in range(cfg.n_layer)]
        self.n_past = 0

    def clear(self):
        self.n_past = 0


class Model:
    """A loaded model with its KV cache: evaluates tokens, returns logits."""

    def __init__(self, path: str | os.PathLike, config_path: str | None = None,
                 ctx_size: int | None = None, n_batch: int = 256, threads: int | None = None):
        self.gguf = GGUFFile(path)
        try:
            self.config = cfg = load_config(self.gguf, config_path)
            if threads:
                _ops.set_threads(threads)
            self.n_ctx = int(ctx_size) if ctx_size else min(cfg.n_ctx_train, DEFAULT_MAX_CTX)
            if self.n_ctx <= 0:
                raise ModelError(f"context size must be positive, got {self.n_ctx}")
            self.n_batch = max(1, min(n_batch, self.n_ctx))
            w = Weights(self.gguf, cfg)
            arch = ARCHITECTURES[cfg.arch]
            self.layers, self.top = arch.load(w, cfg)
            linears = [l for layer in self.layers for l in vars(layer).values()
                       if isinstance(l, Linear)] + [self.top.output]
            self.ws = Workspace(cfg, self.n_batch, self.n_ctx, linears, _ops.effective_threads())
            self.cache = KVCache(cfg, self.n_ctx)
            self._forward = arch.forward
        except BaseException:
            self.gguf.close()
            raise

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def reset(self):
        """Forget the sequence: the next prefill starts from an empty cache."""
        self.cache.clear()

    def _eval(self, tokens, all_logits: bool) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int32).reshape(-1)
        n = len(ids)
        if n == 0:
            raise ValueError("no tokens to evaluate")
        if self.cache.n_past + n > self.n_ctx:
            raise ContextFullError(
                f"{self.cache.n_past} cached + {n} new tokens exceed the context of {self.n_ctx}")
        bad = (ids < 0) | (ids >= self.n_vocab)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary "
                             f"(0..{self.n_vocab - 1})")
        out = np.empty((n, self.n_vocab), np.float32) if all_logits else None
        for s in range(0, n, self.n_batch):
            chunk = ids[s:s + self.n_batch]
            last_chunk = s + len(chunk) == n
            rows = out[s:s + len(chunk)] if all_logits else (
                self.ws.logits if last_chunk else None)
            self._forward(self, chunk, self.cache.n_past, rows)
            self.cache.n_past += len(chunk)
        return out if all_logits else self.ws.logits[0]

    def prefill(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Evaluate tokens after what the cache holds, in batches of n_batch.
        Returns the last position's logits (n_vocab,), or (n_tokens, n_vocab) with all_logits.
        The (n_vocab,) array is the model's own buffer: copy it to keep it past the next call."""
        return self._eval(tokens, all_logits)

    def decode_step(self, token: int) -> np.ndarray:
        """Evaluate one token; returns the logits (n_vocab,) (the model's buffer, see prefill)."""
        self.ws.ids[0] = token
        return self._eval(self.ws.ids[:1], False)

    def close(self):
        self.gguf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

