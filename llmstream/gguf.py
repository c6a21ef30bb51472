"""GGUF reader (versions 2 and 3): validated header, metadata, tensor infos; tensors memory-mapped.

Layout (little-endian):  magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    | n_kv x (string key, u32 value_type, value)
    | n_tensors x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml_type, u64 offset)
    | padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
A string is u64 length + UTF-8 bytes; an array is u32 item type + u64 count + items.

Every count and size is checked against the bytes that remain before anything is allocated, so a
malformed or truncated file raises GGUFError naming the file and the problem, never a crash or a huge
allocation. Tensor data is never copied: `GGUFFile.tensor(name)` is a numpy view into the mmap.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _ops
from .errors import GGUFError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# ggml type id -> (name, elements per block, bytes per block). Pinned to csrc/formats.h by a test.
# ggml type id -> (name, elements per block, bytes per block) of the types llmstream computes, and
# the names of the ggml types it does not (named in the error a file using one gets): both from the
# type table, csrc/types.c
GGML_TYPES: dict[int, tuple[str, int, int]] = {t: (name, blck, size) for t, (name, blck, size, _)
                                               in _ops.type_table().items()}
OTHER_GGML_TYPES = {t: name for t, name in _ops.ggml_type_names().items() if t not in GGML_TYPES}
TYPE_IDS = {name: tid for tid, (name, _, _) in GGML_TYPES.items()}
# Types a weight tensor may have (Q8_1 / Q8_K only ever hold activations).
WEIGHT_TYPES = {tid for tid, (name, _, _) in GGML_TYPES.items() if name not in ("Q8_1", "Q8_K")}

# value type id -> (struct format, size) for scalars
_SCALARS = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
          10: "<u8", 11: "<i8", 12: "<f8"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]   # GGUF order: shape[0] is the contiguous (row) dimension
    type: int
    offset: int              # absolute offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES[self.type][0]

    @property
    def n_rows(self) -> int:
        n = 1
        for d in self.shape[1:]:
            n *= d
        return n

    @property
    def row_bytes(self) -> int:
        _, blck, size = GGML_TYPES[self.type]
        return self.shape[0] // blck * size


class _Cursor:
    def __init__(self, buf, path: str):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)

    def fail(self, what: str):
        raise GGUFError(f"{self.path}: {what} (at byte {self.pos} of {self.end}); "
                        "the file is not a valid GGUF model — re-download or re-convert it")

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.end:
            self.fail(f"truncated file while reading {what}: needs {n} bytes, "
                      f"{self.end - self.pos} left")

    def scalar(self, vtype: int, what: str):
        fmt, size = _SCALARS[vtype]
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self, what):
        return self.scalar(4, what)

    def u64(self, what):
        return self.scalar(10, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            v = self.scalar(vtype, what)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth > 2:
                self.fail(f"{what}: arrays nested too deeply")
            itype = self.u32(f"item type of {what}")
            count = self.u64(f"length of {what}")
            if itype in _NUMPY:
                size = _SCALARS[itype][1]
                self.need(count * size, f"{count} items of {what}")
                arr = np.frombuffer(self.buf, dtype=_NUMPY[itype], count=count, offset=self.pos).copy()
                self.pos += count * size
                return arr.astype(bool) if itype == 7 else arr
            if itype in (_STRING, _ARRAY):
                # each item takes at least 8 bytes (a length): bound the count before looping
                self.need(count * 8, f"{count} items of {what}")
                return [self.value(itype, what, depth + 1) for _ in range(count)]
            self.fail(f"{what}: unknown array item type {itype}")
        self.fail(f"{what}: unknown metadata value type {vtype}")


class GGUFFile:
    """An open GGUF file: `.version`, `.metadata` (dict), `.tensors` (name -> TensorInfo),
    `.tensor(name)` (zero-copy numpy view). Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open the model file ({e.strerror}); "
                            "check the path") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 24:
                raise GGUFError(f"{self.path}: file is {size} bytes, too small to be a GGUF model")
            self._mmap = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- parsing ---------------------------------------------------------------------------------
    def _parse(self):
        c = _Cursor(memoryview(self._mmap), self.path)
        magic = bytes(c.buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected b'GGUF'); "
                            "llmstream loads .gguf models only")
        c.pos = 4
        self.version = c.u32("version")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: GGUF version {self.version} is not supported "
                            "(llmstream reads versions 2 and 3); re-convert the model with a "
                            "current llama.cpp")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # every kv takes >= 12 bytes, every tensor info >= 24: reject absurd counts up front
        c.need(n_kv * 12 + n_tensors * 24, f"{n_kv} metadata entries and {n_tensors} tensor infos")

        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}")
            vtype = c.u32(f"type of metadata '{key}'")
            meta[key] = c.value(vtype, f"metadata '{key}'")
        self.metadata = meta

        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            c.fail(f"general.alignment must be a power of two, got {align!r}")
        self.alignment = align

        infos = []
        for i in range(n_tensors):
            name = c.string(f"name of tensor #{i}")
            n_dims = c.u32(f"dimension count of tensor '{name}'")
            if not 1 <= n_dims <= MAX_DIMS:
                c.fail(f"tensor '{name}' has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
            shape = tuple(c.u64(f"dimension of tensor '{name}'") for _ in range(n_dims))
            ttype = c.u32(f"type of tensor '{name}'")
            offset = c.u64(f"offset of tensor '{name}'")
            infos.append((name, shape, ttype, offset))

        data_start = (c.pos + align - 1) // align * align
        self.data_offset = data_start
        tensors: dict[str, TensorInfo] = {}
        for name, shape, ttype, offset in infos:
            if ttype not in GGML_TYPES:
                known = OTHER_GGML_TYPES.get(ttype)
                what = f"type {known} (ggml type id {ttype})" if known else f"unknown type id {ttype}"
                raise GGUFError(f"{self.path}: tensor '{name}' has {what}, which llmstream cannot "
                                f"compute; it supports {', '.join(n for n, _, _ in GGML_TYPES.values())} "
                                "— use a file quantized to one of those (e.g. Q4_K_M)")
            tname, blck, bsize = GGML_TYPES[ttype]
            n_el = 1
            for d in shape:
                if d <= 0 or d >= 1 << 40:
                    c.fail(f"tensor '{name}' has an invalid dimension {d} in shape {list(shape)}")
                n_el *= d
            if n_el >= 1 << 50:
                c.fail(f"tensor '{name}' shape {list(shape)} overflows")
            if shape[0] % blck:
                c.fail(f"tensor '{name}' ({tname}) row length {shape[0]} is not a multiple of "
                       f"its block size {blck}")
            if offset % align:
                c.fail(f"tensor '{name}' data offset {offset} is not aligned to {align}")
            nbytes = n_el // blck * bsize
            start = data_start + offset
            if start + nbytes > c.end:
                raise GGUFError(f"{self.path}: tensor '{name}' data ends at byte {start + nbytes} "
                                f"but the file has {c.end} bytes; the file is truncated — "
                                "re-download it")
            if name in tensors:
                c.fail(f"tensor '{name}' appears twice")
            tensors[name] = TensorInfo(name, shape, ttype, start, nbytes)
        self.tensors = tensors

    # -- access ----------------------------------------------------------------------------------
    def tensor(self, name: str) -> np.ndarray:
        """Zero-copy view of a tensor: float32/float16 arrays with numpy shape (reversed GGUF
        shape) for F32/F16, uint16 for BF16, and uint8 rows of raw blocks (n_rows, row_bytes)
        for quantized types."""
        info = self.tensors[name]
        tname = info.type_name
        np_shape = tuple(reversed(info.shape))
        if tname == "F32":
            return np.frombuffer(self._mmap, np.float32, info.nbytes // 4, info.offset).reshape(np_shape)
        if tname == "F16":
            return np.frombuffer(self._mmap, np.float16, info.nbytes // 2, info.offset).reshape(np_shape)
        if tname == "BF16":
            return np.frombuffer(self._mmap, np.uint16, info.nbytes // 2, info.offset).reshape(np_shape)
        return np.frombuffer(self._mmap, np.uint8, info.nbytes, info.offset).reshape(
            info.n_rows, info.row_bytes)

    def page_in(self, progress=None, chunk: int = 64 << 20) -> None:
        """Read every page of the file once (into the page cache), calling progress(done, total)
        in bytes after each chunk: a big model's first request then does not wait for the disk,
        and loading can show how far it is."""
        buf = np.frombuffer(self._mmap, np.uint8)
        total, page = buf.size, mmap.PAGESIZE
        for start in range(0, total, chunk):
            int(buf[start:start + chunk:page].sum())       # one byte per page
            if progress is not None:
                progress(min(start + chunk, total), total)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 view (n_rows, row_bytes), whatever its type."""
        info = self.tensors[name]
        return np.frombuffer(self._mmap, np.uint8, info.nbytes, info.offset).reshape(
            info.n_rows, info.row_bytes)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process's resident memory (madvise MADV_DONTNEED on
        the whole pages inside it): for a tensor whose bytes were copied elsewhere (a repacked
        weight). They stay in the page cache and come back if the mmap is read again."""
        info = self.tensors[name]
        page = mmap.PAGESIZE
        start = -(-info.offset // page) * page
        end = (info.offset + info.nbytes) // page * page
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            self._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self):
        # numpy views keep the mmap alive through the buffer protocol; closing with live views
        # raises BufferError, in which case the mapping is released when the last view goes.
        m = getattr(self, "_mmap", None)
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass
        f = getattr(self, "_file", None)
        if f is not None:
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
