"""GGUF reader: agrees with the gguf package on real files; every malformation gives one GGUFError."""
import struct

import gguf
import numpy as np
import pytest

from llmstream.errors import GGUFError
from llmstream.gguf import GGML_TYPES, GGUFFile

from conftest import shared_path


def _write(path, n_tensors=2, **kv):
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in kv.items():
        w.add_string(k, v)
    w.add_array("test.array", [1, 2, 3])
    w.add_float32("test.f", 0.5)
    rng = np.random.default_rng(0)
    for i in range(n_tensors):
        w.add_tensor(f"t{i}", rng.standard_normal((4, 32)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_reads_metadata_and_tensors_like_the_gguf_package(tmp_path):
    p = _write(tmp_path / "m.gguf", **{"general.name": "tiny"})
    with GGUFFile(p) as g:
        assert g.metadata["general.architecture"] == "llama"
        assert g.metadata["general.name"] == "tiny"
        assert list(g.metadata["test.array"]) == [1, 2, 3]
        assert g.metadata["test.f"] == 0.5
        r = gguf.GGUFReader(str(p))
        for t in r.tensors:
            np.testing.assert_array_equal(g.tensor(t.name), t.data)
            assert g.tensor(t.name).shape == (4, 32)


def test_real_reference_file_tensors_are_zero_copy_views():
    path = shared_path("reference", "llama-gqa-Q4_K_M.gguf")
    with GGUFFile(path) as g:
        assert g.metadata["general.architecture"] == "llama"
        t = g.tensor("blk.0.attn_q.weight")
        assert t.dtype == np.uint8 and t.shape == (256, 144) and not t.flags.owndata
        assert g.tensors["output.weight"].type_name == "Q6_K"


def _corrupt(tmp_path, mutate):
    p = _write(tmp_path / "ok.gguf")
    data = bytearray(p.read_bytes())
    data = mutate(data)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    return bad


def _tensor_info_pos(data, name=b"t0"):
    return data.index(struct.pack("<Q", len(name)) + name)


@pytest.mark.parametrize("mutate,message", [
    (lambda d: b"GGML" + d[4:], "not a GGUF file"),
    (lambda d: d[:4] + struct.pack("<I", 1) + d[8:], "version 1 is not supported"),
    (lambda d: d[:4] + struct.pack("<I", 99) + d[8:], "version 99 is not supported"),
    (lambda d: d[:100], "truncated"),
    (lambda d: d[:-40], "truncated"),
    (lambda d: d[:8] + struct.pack("<Q", 1 << 60) + d[16:], "tensor infos"),
    (lambda d: d[:16] + struct.pack("<Q", 1 << 62) + d[24:], "metadata entries"),
    (lambda d: d[:12], "too small"),
])
def test_malformed_files_raise_one_clear_error(tmp_path, mutate, message):
    bad = _corrupt(tmp_path, mutate)
    with pytest.raises(GGUFError) as e:
        GGUFFile(bad)
    assert message in str(e.value) and str(bad) in str(e.value)


def _patch_tensor(data, field, value):
    pos = _tensor_info_pos(data) + 8 + 2  # after name
    n_dims = struct.unpack_from("<I", data, pos)[0]
    dims_pos = pos + 4
    type_pos = dims_pos + 8 * n_dims
    if field == "dim":
        struct.pack_into("<Q", data, dims_pos + 8, value)
    elif field == "ndims":
        struct.pack_into("<I", data, pos, value)
    elif field == "type":
        struct.pack_into("<I", data, type_pos, value)
    elif field == "offset":
        struct.pack_into("<Q", data, type_pos + 4, value)
    return data


@pytest.mark.parametrize("field,value,message", [
    ("type", 77, "unknown type id 77"),
    ("dim", 1 << 45, "invalid dimension"),
    ("dim", 0, "invalid dimension"),
    ("ndims", 9, "dimensions"),
    ("offset", 1 << 20, "truncated"),
    ("offset", 3, "not aligned"),
])
def test_bad_tensor_infos(tmp_path, field, value, message):
    bad = _corrupt(tmp_path, lambda d: _patch_tensor(d, field, value))
    with pytest.raises(GGUFError, match=message):
        GGUFFile(bad)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "nope.gguf")


def test_type_table_matches_gguf_package():
    # Q8_1 only holds activations; ggml's block is 36 bytes (two fp16 + 32 int8), the gguf
    # package still lists an old 40-byte layout, so it is pinned by the C _Static_assert instead.
    for tid, (name, blck, size) in GGML_TYPES.items():
        if name == "Q8_1":
            continue
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tid)] == (blck, size), name


def test_the_type_table_agrees_with_gguf_py():
    """GGML_TYPES and the names of the refused types come from csrc/types.c: every id, name, block
    size and byte size equals gguf-py's independent table."""
    import gguf
    from llmstream.gguf import OTHER_GGML_TYPES
    assert len(GGML_TYPES) >= 17
    for t, (name, blck, size) in GGML_TYPES.items():
        q = gguf.GGMLQuantizationType(t)
        assert q.name == name, name
        # gguf-py still lists Q8_1 with float d and s (40 bytes); ggml's has had fp16 ones (36) since
        # 2023. Q8_1 only ever holds activations, never a file's tensor.
        assert gguf.GGML_QUANT_SIZES[q] == (blck, size) or name == "Q8_1", name
    known = {q.value: q.name for q in gguf.GGMLQuantizationType}
    for t, name in OTHER_GGML_TYPES.items():
        assert t not in GGML_TYPES
        if t in known:                       # ids ggml retired (Q4_2, Q4_3) are gone from gguf-py
            assert known[t] == name
    assert set(known) <= set(GGML_TYPES) | set(OTHER_GGML_TYPES) | {31, 32, 33, 36, 37, 38}
