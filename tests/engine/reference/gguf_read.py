#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A GGUF reader and dequantizer in NumPy, independent of the engine's C++.

Written from the format as llama.cpp documents it (ggml/docs/gguf.md and the
block layouts of ggml-common.h), not from the engine's code, so that the two
check each other. Reads GGUF v2 and v3 through mmap; dequantizes F32, F16,
BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K, vectorized over all
blocks of a tensor.

    f = GGUFFile("model.gguf")
    f.kv["llama.block_count"]        # metadata, as Python values
    f.tensors["token_embd.weight"]   # TensorInfo(name, type, ne, offset)
    f.array("token_embd.weight")     # float32 array of shape ne[::-1]
"""

import mmap
import struct
from dataclasses import dataclass

import numpy as np

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14
BF16 = 30

# ggml type id -> (name, elements per block, bytes per block)
TYPES = {
    F32: ("F32", 1, 4),
    F16: ("F16", 1, 2),
    BF16: ("BF16", 1, 2),
    Q4_0: ("Q4_0", 32, 18),
    Q4_1: ("Q4_1", 32, 20),
    Q5_0: ("Q5_0", 32, 22),
    Q5_1: ("Q5_1", 32, 24),
    Q8_0: ("Q8_0", 32, 34),
    Q4_K: ("Q4_K", 256, 144),
    Q5_K: ("Q5_K", 256, 176),
    Q6_K: ("Q6_K", 256, 210),
}
TYPE_IDS = {name: tid for tid, (name, _, _) in TYPES.items()}

# GGUF metadata value types: id -> struct format of a scalar
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f",
            7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class GGUFError(Exception):
    pass


@dataclass
class TensorInfo:
    name: str
    type: int
    ne: tuple  # ne[0] is the row length (fastest varying)
    offset: int  # from the start of the data section

    @property
    def n_elements(self):
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def n_bytes(self):
        _, elems, size = TYPES[self.type]
        return self.n_elements // elems * size


class GGUFFile:
    def __init__(self, path):
        with open(path, "rb") as fh:
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._mm)
        self._pos = 0
        if bytes(self._take(4)) != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file")
        (self.version,) = self._unpack("<I")
        if self.version not in (2, 3):
            raise GGUFError(f"{path}: GGUF version {self.version} unsupported")
        n_tensors, n_kv = self._unpack("<QQ")
        self.kv = {}
        for _ in range(n_kv):
            key = self._string()
            (vtype,) = self._unpack("<I")
            self.kv[key] = self._value(vtype)
        self.tensors = {}
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I")
            ne = self._unpack("<" + "Q" * n_dims)
            ttype, offset = self._unpack("<IQ")
            self.tensors[name] = TensorInfo(name, ttype, tuple(ne), offset)
        align = self.kv.get("general.alignment", 32)
        self.data_offset = (self._pos + align - 1) // align * align

    # --- parsing helpers ---
    def _take(self, n):
        if self._pos + n > len(self._buf):
            raise GGUFError(f"truncated at byte {self._pos}")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))

    def _string(self):
        (n,) = self._unpack("<Q")
        return bytes(self._take(n)).decode("utf-8", errors="surrogateescape")

    def _value(self, vtype):
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])[0]
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, n = self._unpack("<IQ")
            return [self._value(etype) for _ in range(n)]
        raise GGUFError(f"unknown metadata type {vtype} at byte {self._pos}")

    # --- tensors ---
    def raw(self, name):
        """The tensor's bytes as a uint8 array (a view of the mapping)."""
        t = self.tensors[name]
        start = self.data_offset + t.offset
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.n_bytes, offset=start)

    def array(self, name):
        """The tensor dequantized to float32, shaped ne reversed (rows, row)."""
        t = self.tensors[name]
        if t.type not in TYPES:
            raise GGUFError(f"{name}: tensor type {t.type} unsupported")
        return dequantize(t.type, self.raw(name), t.n_elements).reshape(t.ne[::-1])


def _f16(u8, col, blocks):
    """The half at byte `col` of each block, as float32 column (blocks, 1)."""
    return u8[:, col:col + 2].copy().view("<f2").astype(np.float32).reshape(blocks, 1)


def _k_scales(sc):
    """Q4_K/Q5_K 6-bit scales and mins: 12 bytes -> (scales[8], mins[8])."""
    sc = sc.astype(np.uint8)
    lo, hi = sc[:, 0:4], sc[:, 4:8]
    top = sc[:, 8:12]
    scales = np.concatenate([lo & 63, (top & 15) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([hi & 63, (top >> 4) | ((hi >> 6) << 4)], axis=1)
    return scales.astype(np.float32), mins.astype(np.float32)


def dequantize(ttype, u8, n):
    """Elements of type `ttype` held in the uint8 array `u8`, as float32[n]."""
    name, elems, size = TYPES[ttype]
    if n % elems or u8.size != n // elems * size:
        raise GGUFError(f"{name}: {u8.size} bytes do not hold {n} elements")
    if ttype == F32:
        return u8.view("<f4").astype(np.float32)
    if ttype == F16:
        return u8.view("<f2").astype(np.float32)
    if ttype == BF16:  # the upper 16 bits of a float32
        return (u8.view("<u2").astype(np.uint32) << 16).view(np.float32)
    nb = n // elems
    b = u8.reshape(nb, size)
    if ttype == Q8_0:  # half d, int8 qs[32]
        q = b[:, 2:].view(np.int8).astype(np.float32)
        return (_f16(b, 0, nb) * q).reshape(n)
    if ttype in (Q4_0, Q4_1, Q5_0, Q5_1):
        # half d, (Q4_1/Q5_1: half m), (Q5_0/Q5_1: uint8 qh[4]), uint8 qs[16]:
        # the low nibbles of qs are elements 0..15, the high ones 16..31;
        # the fifth bit of element j is bit j of qh as a little-endian
        # uint32, i.e. bit j % 8 of qh[j // 8].
        qs = b[:, -16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1)
        if ttype in (Q5_0, Q5_1):
            qh = b[:, -20:-16]
            q = q | (np.unpackbits(qh, axis=1, bitorder="little") << 4)
        q = q.astype(np.float32)
        d = _f16(b, 0, nb)
        if ttype == Q4_0:  # x = d (q - 8)
            return (d * (q - 8)).reshape(n)
        if ttype == Q5_0:  # x = d (q - 16)
            return (d * (q - 16)).reshape(n)
        return (d * q + _f16(b, 2, nb)).reshape(n)  # Q4_1, Q5_1: x = d q + m
    if ttype in (Q4_K, Q5_K):
        # half d, half dmin, scales[12], (Q5_K: qh[32]), qs[128]
        d, dmin = _f16(b, 0, nb), _f16(b, 2, nb)
        scales, mins = _k_scales(b[:, 4:16])
        qs = b[:, -128:].reshape(nb, 4, 32)  # 4 chunks of 64 elements
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(nb, 8, 32)  # sub-block 2c, 2c+1
        if ttype == Q5_K:
            qh = b[:, 16:48]  # bit s of qh[l]: fifth bit of element 32 s + l
            bits = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
            q = q | (bits << 4)
        x = (d * scales)[:, :, None] * q.astype(np.float32) - (dmin * mins)[:, :, None]
        return x.reshape(n)
    if ttype == Q6_K:  # ql[128], qh[64], int8 scales[16], half d
        ql = b[:, 0:128].reshape(nb, 2, 2, 32)  # (half, ql chunk of 32, l)
        qh = b[:, 128:192].reshape(nb, 2, 1, 32)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b, 208, nb)
        lo = np.concatenate([ql & 15, ql >> 4], axis=2)  # (half, 4 quarters, l)
        shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
        hi = (qh >> shifts) & 3
        q = (lo | (hi << 4)).astype(np.float32) - 32  # (nb, 2, 4, 32): element 128h+32k+l
        x = (d * sc).reshape(nb, 16, 1) * q.reshape(nb, 16, 16)
        return x.reshape(n)
    raise GGUFError(f"type {ttype} unsupported")


def _main():
    import argparse
    import os
    p = argparse.ArgumentParser(description="print a GGUF file's metadata and tensors")
    p.add_argument("model")
    p.add_argument("--dump", metavar="DIR",
                   help="write each tensor dequantized to DIR/NAME.f32 (raw little-endian float32)")
    a = p.parse_args()
    f = GGUFFile(a.model)
    if a.dump:
        for name in f.tensors:
            f.array(name).astype("<f4").tofile(os.path.join(a.dump, name + ".f32"))
        return
    print(f"version {f.version}, data at {f.data_offset}")
    for k, v in f.kv.items():
        if isinstance(v, list) and len(v) > 8:
            v = f"{v[:8]!r}... ({len(v)} items)"
        print(f"{k} = {v!r}")
    for t in f.tensors.values():
        print(f"{t.name} {TYPES.get(t.type, ('?',))[0]} {list(t.ne)} @{t.offset}")


if __name__ == "__main__":
    _main()
