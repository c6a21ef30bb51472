"""Architectures on hyper-parameters the shared fixtures do not use (head counts, head dims, MQA,
partial and full rotation, tied embeddings, sliding window, more layers, odd prompt lengths),
against a small numpy forward pass. Models are written here with the `gguf` package's writer, in both
file layouts; the candle layout gets a config.json beside the file."""
import json
import math
import zlib

import gguf
import numpy as np
import pytest

from llmstream.engine import Model, Session
from llmstream.errors import ModelError

# --- numpy reference ---------------------------------------------------------------------------


def rope_ref(x, pos, n_rot, base, neox):
    """x (n_head, hd) at position pos."""
    x = x.copy()
    half = n_rot // 2
    theta = pos * base ** (-2.0 * np.arange(half) / n_rot)
    c, s = np.cos(theta), np.sin(theta)
    if neox:
        a, b = x[:, :half].copy(), x[:, half:n_rot].copy()
        x[:, :half], x[:, half:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[:, 0:n_rot:2].copy(), x[:, 1:n_rot:2].copy()
        x[:, 0:n_rot:2], x[:, 1:n_rot:2] = a * c - b * s, a * s + b * c
    return x


def attention_ref(q, k, v, n_head, n_kv, scale, window):
    """q (T, n_head*hd), k/v (T, n_kv*hd) already roped; causal (+ sliding window)."""
    T = q.shape[0]
    hd = q.shape[1] // n_head
    out = np.zeros_like(q)
    for h in range(n_head):
        g = h // (n_head // n_kv)
        qh, kh, vh = q[:, h * hd:(h + 1) * hd], k[:, g * hd:(g + 1) * hd], v[:, g * hd:(g + 1) * hd]
        s = qh @ kh.T * scale
        i, j = np.indices((T, T))
        mask = j > i
        if window:
            mask |= j <= i - window
        s[mask] = -np.inf
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h * hd:(h + 1) * hd] = p @ vh
    return out


def forward_ref(W, hp, tokens, neox):
    """Full-precision forward over all tokens; W holds numpy weights in (out, in) orientation."""
    E, H, KV = hp["n_embd"], hp["n_head"], hp["n_head_kv"]
    hd = E // H
    T = len(tokens)
    x = W["tok"][tokens].astype(np.float64)
    eps = 1e-5

    def rms(v, w):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + eps) * w

    def ln(v, w, b):
        mu = v.mean(-1, keepdims=True)
        return (v - mu) / np.sqrt(((v - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b

    def gelu(v):
        return 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))

    for L in W["layers"]:
        if hp["arch"] == "llama":
            h = rms(x, L["attn_norm"])
            q, k, v = h @ L["wq"].T, h @ L["wk"].T, h @ L["wv"].T
        else:
            h = ln(x, L["attn_norm"], L["attn_norm_b"])
            q, k, v = h @ L["wq"].T + L["bq"], h @ L["wk"].T + L["bk"], h @ L["wv"].T + L["bv"]
        for t in range(T):
            q[t] = rope_ref(q[t].reshape(H, hd), t, hp["n_rot"], hp["base"], neox).reshape(-1)
            k[t] = rope_ref(k[t].reshape(KV, hd), t, hp["n_rot"], hp["base"], neox).reshape(-1)
        a = attention_ref(q, k, v, H, KV, 1 / math.sqrt(hd), hp.get("window", 0))
        if hp["arch"] == "llama":
            x = x + a @ L["wo"].T
            h = rms(x, L["ffn_norm"])
            g = h @ L["w_gate"].T
            x = x + (g / (1 + np.exp(-g)) * (h @ L["w_up"].T)) @ L["w_down"].T
        else:
            m = gelu(h @ L["w_up"].T + L["b_up"]) @ L["w_down"].T + L["b_down"]
            x = x + (a @ L["wo"].T + L["bo"]) + m
    if hp["arch"] == "llama":
        x = rms(x, W["out_norm"])
        out = W.get("output", W["tok"])
        return x @ out.T
    x = ln(x, W["out_norm"], W["out_norm_b"])
    return x @ W["output"].T + W["output_b"]


# --- model writers -----------------------------------------------------------------------------


def random_weights(hp, rng):
    E, H, KV, F, V = hp["n_embd"], hp["n_head"], hp["n_head_kv"], hp["n_ff"], hp["n_vocab"]
    hd = E // H
    r = lambda *s, scale=None: (rng.standard_normal(s) * (scale or 1 / math.sqrt(s[-1]))).astype(np.float32)
    W = {"tok": r(V, E, scale=1.0), "out_norm": 1 + 0.1 * r(E, scale=1.0), "layers": []}
    if hp["arch"] == "phi2":
        W["out_norm_b"] = 0.1 * r(E, scale=1.0)
        W["output"] = r(V, E)
        W["output_b"] = 0.1 * r(V, scale=1.0)
    elif not hp.get("tied"):
        W["output"] = r(V, E)
    for _ in range(hp["n_layer"]):
        L = {"attn_norm": 1 + 0.1 * r(E, scale=1.0), "wq": r(E, E), "wk": r(KV * hd, E),
             "wv": r(KV * hd, E), "wo": r(E, E), "w_up": r(F, E), "w_down": r(E, F)}
        if hp["arch"] == "llama":
            L.update(ffn_norm=1 + 0.1 * r(E, scale=1.0), w_gate=r(F, E))
        else:
            L.update(attn_norm_b=0.1 * r(E, scale=1.0), bq=0.1 * r(E, scale=1.0),
                     bk=0.1 * r(KV * hd, scale=1.0), bv=0.1 * r(KV * hd, scale=1.0),
                     bo=0.1 * r(E, scale=1.0), b_up=0.1 * r(F, scale=1.0), b_down=0.1 * r(E, scale=1.0))
        W["layers"].append(L)
    return W


def _permute_for_llama_cpp(w, n_head):
    """HF (rotate-half) row order -> llama.cpp's interleaved order, as convert_hf_to_gguf does."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_llama_cpp(path, W, hp, fused_qkv=False, extra=None):
    """extra(writer), when given, adds metadata or tensors before the file is written."""
    arch = hp["arch"]
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_context_length(512)
    wr.add_embedding_length(hp["n_embd"])
    wr.add_block_count(hp["n_layer"])
    wr.add_feed_forward_length(hp["n_ff"])
    wr.add_head_count(hp["n_head"])
    wr.add_head_count_kv(hp["n_head_kv"])
    wr.add_rope_dimension_count(hp["n_rot"])
    wr.add_rope_freq_base(hp["base"])
    if arch == "llama":
        wr.add_layer_norm_rms_eps(1e-5)
    else:
        wr.add_layer_norm_eps(1e-5)
    t = lambda name, a: wr.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    t("token_embd.weight", W["tok"])
    t("output_norm.weight", W["out_norm"])
    if "output" in W:
        t("output.weight", W["output"])
    if arch == "phi2":
        t("output_norm.bias", W["out_norm_b"])
        t("output.bias", W["output_b"])
    for i, L in enumerate(W["layers"]):
        p = f"blk.{i}."
        t(p + "attn_norm.weight", L["attn_norm"])
        t(p + "attn_output.weight", L["wo"])
        t(p + "ffn_up.weight", L["w_up"])
        t(p + "ffn_down.weight", L["w_down"])
        if arch == "llama":
            t(p + "attn_q.weight", _permute_for_llama_cpp(L["wq"], hp["n_head"]))
            t(p + "attn_k.weight", _permute_for_llama_cpp(L["wk"], hp["n_head_kv"]))
            t(p + "attn_v.weight", L["wv"])
            t(p + "ffn_norm.weight", L["ffn_norm"])
            t(p + "ffn_gate.weight", L["w_gate"])
        else:
            t(p + "attn_norm.bias", L["attn_norm_b"])
            t(p + "attn_output.bias", L["bo"])
            t(p + "ffn_up.bias", L["b_up"])
            t(p + "ffn_down.bias", L["b_down"])
            if fused_qkv:
                t(p + "attn_qkv.weight", np.concatenate([L["wq"], L["wk"], L["wv"]]))
                t(p + "attn_qkv.bias", np.concatenate([L["bq"], L["bk"], L["bv"]]))
            else:
                for n in "qkv":
                    t(p + f"attn_{n}.weight", L[f"w{n}"])
                    t(p + f"attn_{n}.bias", L[f"b{n}"])
    if extra:
        extra(wr)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def write_candle(path, W, hp):
    """No metadata, Hugging Face names and row order; config.json beside the file."""
    wr = gguf.GGUFWriter(str(path), "unused")
    wr.kv_data = [{}]  # candle's tensor-tools writes no metadata at all
    t = lambda name, a: wr.add_tensor(name, np.ascontiguousarray(a, dtype=np.float32))
    if hp["arch"] == "llama":
        t("model.embed_tokens.weight", W["tok"])
        t("model.norm.weight", W["out_norm"])
        t("lm_head.weight", W.get("output", W["tok"]))
        for i, L in enumerate(W["layers"]):
            p = f"model.layers.{i}."
            for n in "qkvo":
                t(p + f"self_attn.{n}_proj.weight", L[f"w{n}"])
            t(p + "input_layernorm.weight", L["attn_norm"])
            t(p + "post_attention_layernorm.weight", L["ffn_norm"])
            t(p + "mlp.gate_proj.weight", L["w_gate"])
            t(p + "mlp.up_proj.weight", L["w_up"])
            t(p + "mlp.down_proj.weight", L["w_down"])
        cfg = {"model_type": "mistral", "rms_norm_eps": 1e-5, "sliding_window": hp.get("window")}
    else:
        t("transformer.embd.wte.weight", W["tok"])
        t("lm_head.ln.weight", W["out_norm"])
        t("lm_head.ln.bias", W["out_norm_b"])
        t("lm_head.linear.weight", W["output"])
        t("lm_head.linear.bias", W["output_b"])
        for i, L in enumerate(W["layers"]):
            p = f"transformer.h.{i}."
            t(p + "ln.weight", L["attn_norm"])
            t(p + "ln.bias", L["attn_norm_b"])
            t(p + "mixer.Wqkv.weight", np.concatenate([L["wq"], L["wk"], L["wv"]]))
            t(p + "mixer.Wqkv.bias", np.concatenate([L["bq"], L["bk"], L["bv"]]))
            t(p + "mixer.out_proj.weight", L["wo"])
            t(p + "mixer.out_proj.bias", L["bo"])
            t(p + "mlp.fc1.weight", L["w_up"])
            t(p + "mlp.fc1.bias", L["b_up"])
            t(p + "mlp.fc2.weight", L["w_down"])
            t(p + "mlp.fc2.bias", L["b_down"])
        hd = hp["n_embd"] // hp["n_head"]
        cfg = {"model_type": "phi", "layer_norm_eps": 1e-5, "partial_rotary_factor": hp["n_rot"] / hd}
    cfg.update(vocab_size=hp["n_vocab"], hidden_size=hp["n_embd"], intermediate_size=hp["n_ff"],
               num_hidden_layers=hp["n_layer"], num_attention_heads=hp["n_head"],
               num_key_value_heads=hp["n_head_kv"], rope_theta=hp["base"],
               max_position_embeddings=512)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    (path.parent / "config.json").write_text(json.dumps(cfg))


# --- cases -------------------------------------------------------------------------------------

CASES = {
    # multi-query attention, head_dim 24, tied embeddings, big rope base, 3 layers
    "llama-mqa-tied": dict(arch="llama", n_embd=96, n_head=4, n_head_kv=1, n_ff=160, n_layer=3,
                           n_vocab=77, base=500000.0, tied=True),
    # head_dim 64, no GQA, 4 layers
    "llama-mha-hd64": dict(arch="llama", n_embd=128, n_head=2, n_head_kv=2, n_ff=96, n_layer=4,
                           n_vocab=50, base=10000.0),
    # 6 query heads over 3 KV heads, odd vocabulary
    "llama-gqa-6-3": dict(arch="llama", n_embd=192, n_head=6, n_head_kv=3, n_ff=64, n_layer=2,
                          n_vocab=101, base=10000.0),
    # phi-2 with partial rotation 8 of 32, separate q/k/v, 3 layers
    "phi2-partial8": dict(arch="phi2", n_embd=160, n_head=5, n_head_kv=5, n_ff=224, n_layer=3,
                          n_vocab=90, base=10000.0, n_rot=8),
    # phi-2 with full rotation of head_dim 16 and fused qkv
    "phi2-full-fused": dict(arch="phi2", n_embd=64, n_head=4, n_head_kv=4, n_ff=128, n_layer=2,
                            n_vocab=64, base=10000.0, n_rot=16, fused=True),
}


def _hp(name):
    hp = dict(CASES[name])
    hp.setdefault("n_rot", hp["n_embd"] // hp["n_head"])
    return hp


def _eval(path, config, tokens, n_prefill, ctx=None):
    with Model(path, config_path=config, ctx_size=ctx) as m:
        s = Session(m)
        out = np.empty((len(tokens), m.n_vocab), np.float32)
        out[:n_prefill] = s.prefill(tokens[:n_prefill], all_logits=True)
        for i in range(n_prefill, len(tokens)):
            out[i] = s.decode_step(int(tokens[i]))
    return out


def _compare(got, ref):
    err = (got - ref) / ref.std()
    rms, mx = float(np.sqrt((err ** 2).mean())), float(np.abs(err).max())
    # the engine keeps K/V (and Q for Q·K) in f16 like llama.cpp: ~1e-3 relative rounding
    assert rms < 4e-3 and mx < 3e-2, f"rms {rms:.5f} max {mx:.5f}"


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("layout", ["llama.cpp", "candle"])
def test_forward_matches_numpy_reference(tmp_path, name, layout):
    hp = _hp(name)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{layout}".encode()))
    W = random_weights(hp, rng)
    tokens = rng.integers(0, hp["n_vocab"], size=13).astype(np.int32)
    path = tmp_path / "model.gguf"
    if layout == "llama.cpp":
        write_llama_cpp(path, W, hp, fused_qkv=hp.get("fused", False))
    else:
        write_candle(path, W, hp)
    # HF row order with rotate-half RoPE; the llama.cpp file holds permuted Q/K rows for its
    # interleaved RoPE, which must give the same logits
    ref = forward_ref(W, hp, tokens, neox=True)
    # odd split: 5 tokens in one batch, then one at a time
    _compare(_eval(path, None, tokens, 5), ref)
    # all in one batch, and a batch of one followed by decode steps
    _compare(_eval(path, None, tokens, len(tokens)), ref)
    _compare(_eval(path, None, tokens, 1), ref)


def test_mistral_sliding_window_is_honoured(tmp_path):
    hp = dict(_hp("llama-gqa-6-3"), window=4)
    rng = np.random.default_rng(7)
    W = random_weights(hp, rng)
    tokens = rng.integers(0, hp["n_vocab"], size=11).astype(np.int32)
    write_candle(tmp_path / "m.gguf", W, hp)
    got = _eval(tmp_path / "m.gguf", None, tokens, 6)
    _compare(got, forward_ref(W, hp, tokens, True))
    # and the window matters: without it, later positions differ
    full = forward_ref(W, dict(hp, window=0), tokens, True)
    assert np.abs(got[-1] - full[-1]).max() > 1e-2


def test_candle_config_mismatch_is_a_clear_error(tmp_path):
    hp = _hp("llama-mha-hd64")
    W = random_weights(hp, np.random.default_rng(1))
    write_candle(tmp_path / "m.gguf", W, hp)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="model.layers.4.input_layernorm.weight' is missing"):
        Model(tmp_path / "m.gguf")
    cfg["num_hidden_layers"] = 4
    cfg["hidden_size"] = 256
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="has shape"):
        Model(tmp_path / "m.gguf")


def test_unknown_architecture_is_a_clear_error(tmp_path):
    wr = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    wr.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    with pytest.raises(ModelError, match="architecture 'mamba' is not supported"):
        Model(tmp_path / "m.gguf")


def test_context_capacity_is_enforced(tmp_path):
    from llmstream.errors import ContextFullError
    hp = _hp("llama-mqa-tied")
    write_llama_cpp(tmp_path / "m.gguf", random_weights(hp, np.random.default_rng(2)), hp)
    with Model(tmp_path / "m.gguf", ctx_size=8) as m:
        s = Session(m)
        s.prefill([1, 2, 3, 4, 5, 6, 7])
        s.decode_step(8)
        with pytest.raises(ContextFullError):
            s.decode_step(9)
        s.reset()
        s.prefill(list(range(8)))
