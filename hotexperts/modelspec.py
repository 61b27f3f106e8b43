"""Model specs: the shapes and exact byte sizes of a MoE model that tracing, simulation and tuning need.

A :class:`ModelSpec` comes from a GGUF header (:func:`spec_from_gguf`, header only, no tensor
data) or from a built-in preset (:mod:`hotexperts.presets`), and :func:`load_model_spec` accepts
a preset name, a ``.gguf`` path or a ``.json`` written by ``hotexperts model ... --json``.

GGUF layout (ggml's ``docs/gguf.md``): magic ``GGUF``, version (u32), tensor count and KV count
(u64 each, from version 2 on), the KV pairs, one info record per tensor (name, dims, ggml type,
offset into the data region), padding to ``general.alignment`` (default 32), then the tensor data.
A tensor's byte size follows from its shape and ggml type: ``n_elements / block_size * type_size``
(``gguf.GGML_QUANT_SIZES``), rows being whole blocks.

Which tensors are what follows llama.cpp's tensor names (``src/llama-arch.cpp``, ``gguf-py``):
routed experts are ``blk.N.ffn_{gate,up,down}_exps`` or the merged ``blk.N.ffn_gate_up_exps``
(last dimension = number of experts), shared experts ``blk.N.ffn_*_shexp``, a layer with a KV
cache has ``attn_k``/``attn_v`` (or MLA's ``attn_kv_a_mqa``/``attn_kv_b``, or a fused
``attn_qkv`` in a layer without recurrent ``ssm_*`` tensors: Qwen3.5's Gated-DeltaNet layers
also name their fused projection ``attn_qkv``).
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

from hotexperts.errors import InputError

__all__ = [
    "ModelSpec",
    "KV_TYPE_BYTES",
    "TensorInfo",
    "GGUFHeader",
    "ggml_type_sizes",
    "tensor_nbytes",
    "read_gguf_header",
    "spec_from_header",
    "spec_from_gguf",
    "load_model_spec",
]

# bytes per element of a KV cache type (ggml block size / block elements)
#: expert ids are stored as uint16: at most this many experts per layer
MAX_EXPERTS = 65536
KV_TYPE_BYTES: dict[str, float] = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}


@dataclass(frozen=True)
class ModelSpec:
    """What hotexperts needs to know about a MoE model.

    Per-MoE-layer tuples (``expert_bytes``, ``expert_types``) follow ``moe_layers`` order.
    ``expert_bytes[i]`` is the size of ONE routed expert (gate + up + down, plus per-expert biases
    or scales if the model has them) of layer ``moe_layers[i]``; ``dense_bytes`` is every other
    weight (embeddings, output head, attention / linear attention, norms, routers, shared experts).
    ``embd_bytes`` is the token-embedding part of ``dense_bytes`` (llama.cpp keeps it in host
    memory even with all layers offloaded). KV cache: ``n_kv_layers`` layers each store
    ``n_head_kv * head_dim`` K and ``n_head_kv * head_dim_v`` V elements per token
    (``head_dim_v`` 0 means equal to ``head_dim``). ``extra["estimates"]`` lists fields that are
    estimates rather than read or derived exactly.
    """

    name: str
    arch: str
    n_layer: int
    moe_layers: tuple[int, ...]
    n_expert: int
    n_expert_used: int
    hidden_size: int
    expert_ff: int
    expert_bytes: tuple[int, ...]
    dense_bytes: int
    n_shared_expert: int = 0
    shared_ff: int = 0
    expert_types: tuple[dict[str, str], ...] = ()
    # attention / KV cache
    n_kv_layers: int = 0
    n_head_kv: int = 0
    head_dim: int = 0
    n_head: int = 0
    vocab_size: int = 0
    # bytes of a fixed-size recurrent state (e.g. linear-attention layers), independent of context
    state_bytes: int = 0
    source: str = "preset"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # V head size where it differs from the K head size (MLA); 0 = same as head_dim
    head_dim_v: int = 0
    # bytes of the token embedding (included in dense_bytes)
    embd_bytes: int = 0

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def total_expert_bytes(self) -> int:
        """Bytes of all routed experts of all MoE layers."""
        return int(sum(self.expert_bytes) * self.n_expert)

    @property
    def mean_expert_bytes(self) -> float:
        """Mean bytes of one routed expert over the MoE layers."""
        return sum(self.expert_bytes) / len(self.expert_bytes) if self.expert_bytes else 0.0

    def expert_bytes_of_layer(self, layer: int) -> int:
        """Bytes of one routed expert of model layer ``layer`` (a MoE layer id, not an index)."""
        try:
            return self.expert_bytes[self.moe_layers.index(layer)]
        except ValueError:
            raise ValueError(f"layer {layer} is not a MoE layer of {self.name}") from None

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        """KV-cache bytes per token of context (K and V, all layers with a KV cache)."""
        try:
            per = KV_TYPE_BYTES[kv_type]
        except KeyError:
            raise ValueError(f"unknown KV cache type {kv_type!r}; known: {', '.join(KV_TYPE_BYTES)}") from None
        dv = self.head_dim_v or self.head_dim
        return self.n_kv_layers * self.n_head_kv * (self.head_dim + dv) * per

    def validate(self, path: str | os.PathLike[str] | None = None) -> ModelSpec:
        """Check internal consistency; raise :class:`InputError` naming ``path`` if inconsistent."""
        problems = []
        if self.n_layer <= 0:
            problems.append(f"n_layer must be positive, got {self.n_layer}")
        if not self.moe_layers:
            problems.append("no MoE layers")
        if list(self.moe_layers) != sorted(set(self.moe_layers)):
            problems.append("moe_layers must be strictly increasing")
        if self.moe_layers and not (0 <= self.moe_layers[0] and self.moe_layers[-1] < self.n_layer):
            problems.append(f"moe_layers must lie in 0..{self.n_layer - 1}")
        if len(self.expert_bytes) != len(self.moe_layers):
            problems.append(
                f"expert_bytes has {len(self.expert_bytes)} entries for {len(self.moe_layers)} MoE layers"
            )
        if self.expert_types and len(self.expert_types) != len(self.moe_layers):
            problems.append(
                f"expert_types has {len(self.expert_types)} entries for {len(self.moe_layers)} MoE layers"
            )
        if any(b <= 0 for b in self.expert_bytes):
            problems.append("expert_bytes must be positive")
        if self.n_expert <= 0 or not (0 < self.n_expert_used <= self.n_expert):
            problems.append(f"need 0 < n_expert_used <= n_expert, got {self.n_expert_used} of {self.n_expert}")
        if self.dense_bytes < 0:
            problems.append("dense_bytes must not be negative")
        if self.n_expert > MAX_EXPERTS:
            problems.append(f"n_expert {self.n_expert} is more than hotexperts handles ({MAX_EXPERTS})")
        for name in ("hidden_size", "expert_ff"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_kv_layers", "n_head_kv", "head_dim", "head_dim_v", "n_head", "vocab_size", "state_bytes",
                     "embd_bytes", "n_shared_expert", "shared_ff"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.n_kv_layers > self.n_layer:
            problems.append(f"n_kv_layers {self.n_kv_layers} exceeds n_layer {self.n_layer}")
        if self.embd_bytes > self.dense_bytes:
            problems.append("embd_bytes exceeds dense_bytes")
        if problems:
            raise InputError(path, "inconsistent model spec: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["moe_layers"] = list(self.moe_layers)
        d["expert_bytes"] = list(self.expert_bytes)
        d["expert_types"] = [dict(t) for t in self.expert_types]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        kw["moe_layers"] = tuple(int(x) for x in kw.get("moe_layers", ()))
        kw["expert_bytes"] = tuple(int(x) for x in kw.get("expert_bytes", ()))
        kw["expert_types"] = tuple(dict(t) for t in kw.get("expert_types", ()))
        for f in fields(cls):
            if f.type in ("int", int) and f.name in kw:
                v = kw[f.name]
                if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
                    raise ValueError(f"{f.name} must be an integer, got {v!r}")
                kw[f.name] = int(v)
        for name in ("name", "arch"):
            if name in kw and not isinstance(kw[name], str):
                raise ValueError(f"{name} must be a string, got {kw[name]!r}")
        return cls(**kw)


# ---------------------------------------------------------------------------------------------
# GGUF header reading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-info record of a GGUF header. ``shape`` is in ggml order (ne0 first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    n_bytes: int
    offset: int = 0

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """The parsed header of a GGUF file: metadata KV pairs and tensor infos (no tensor data)."""

    version: int
    kv: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int = 0
    alignment: int = 32
    file_size: int = 0

    @property
    def data_size(self) -> int:
        """Bytes of the tensor-data region the tensor infos describe (end of the last tensor)."""
        return max((t.offset + t.n_bytes for t in self.tensors), default=0)


def ggml_type_sizes() -> dict[str, tuple[int, int]]:
    """``{type name: (block elements, block bytes)}`` for every ggml type the gguf package knows."""
    import gguf

    return {t.name: tuple(v) for t, v in gguf.GGML_QUANT_SIZES.items()}  # type: ignore[misc]


_TYPE_SIZES: dict[str, tuple[int, int]] | None = None


def _type_sizes() -> dict[str, tuple[int, int]]:
    global _TYPE_SIZES
    if _TYPE_SIZES is None:
        _TYPE_SIZES = ggml_type_sizes()
    return _TYPE_SIZES


def tensor_nbytes(shape: Sequence[int], ggml_type: str) -> int:
    """Bytes of a tensor of ``shape`` (ggml order) stored as ``ggml_type`` (e.g. ``"Q4_K"``)."""
    try:
        block, size = _type_sizes()[ggml_type]
    except KeyError:
        raise ValueError(f"unknown ggml type {ggml_type!r}") from None
    n = 1
    for d in shape:
        n *= int(d)
    if shape and int(shape[0]) % block != 0:
        raise ValueError(f"row length {shape[0]} is not a multiple of {ggml_type}'s block of {block}")
    return n // block * size


# GGUF metadata value types (gguf.GGUFValueType)
_SCALAR_FORMATS: dict[int, str] = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_T_STRING = 8
_T_ARRAY = 9
# NOTE: arrays longer than this (token lists, merges, scores) are summarised as ("array", type,
# length) instead of being turned into Python objects: a 250K-token vocabulary would cost
# seconds and hundreds of MB otherwise, and a model spec never needs the strings.
_MAX_KEPT_ARRAY = 4096
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _Reader:
    """Sequential reader over a file with a growing in-memory window; raises on truncation."""

    def __init__(self, f: BinaryIO, path: str, file_size: int) -> None:
        self.f = f
        self.path = path
        self.file_size = file_size
        self.buf = bytearray()
        self.pos = 0
        self.endian = "<"
        self.where = "header"

    def _need(self, n: int) -> None:
        short = self.pos + n - len(self.buf)
        if short > 0:
            chunk = self.f.read(max(short, 1 << 20))
            self.buf += chunk
            if self.pos + n > len(self.buf):
                raise InputError(
                    self.path,
                    f"truncated GGUF header: needs {self.pos + n} bytes, file has {self.file_size}",
                    where=self.where,
                )

    def take(self, n: int) -> bytes:
        self._need(n)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        vals = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += size
        return vals[0] if len(vals) == 1 else vals

    def string(self) -> str:
        n = self.unpack("Q")
        if n > self.file_size:
            raise InputError(self.path, f"corrupt GGUF header: string length {n} exceeds the file size", where=self.where)
        raw = self.take(n)
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        # NOTE: hot loop for token lists and merges (~250K strings): local names, no per-item calls
        # unless the window must grow.
        u64 = struct.Struct(self.endian + "Q").unpack_from
        for _ in range(count):
            if self.pos + 8 > len(self.buf):
                self._need(8)
            n = u64(self.buf, self.pos)[0]
            self.pos += 8
            if self.pos + n > len(self.buf):
                if n > self.file_size:
                    raise InputError(
                        self.path, f"corrupt GGUF header: string length {n} exceeds the file size", where=self.where
                    )
                self._need(n)
            self.pos += n

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.unpack(_SCALAR_FORMATS[vtype])
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY and depth == 0:
            itype = self.unpack("I")
            count = self.unpack("Q")
            if count > self.file_size:
                raise InputError(self.path, f"corrupt GGUF header: array length {count} exceeds the file size", where=self.where)
            if itype in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[itype]
                size = struct.calcsize(fmt) * count
                self._need(size)
                if count > _MAX_KEPT_ARRAY:
                    self.pos += size
                    return ("array", itype, count)
                vals = list(struct.unpack_from(f"{self.endian}{count}{fmt}", self.buf, self.pos))
                self.pos += size
                return vals
            if itype == _T_STRING:
                if count > _MAX_KEPT_ARRAY:
                    self.skip_strings(count)
                    return ("array", itype, count)
                return [self.string() for _ in range(count)]
            if itype == _T_ARRAY:
                return [self.value(_T_ARRAY, depth + 1) for _ in range(count)]
        if vtype == _T_ARRAY:  # nested array: keep its element count only
            itype = self.unpack("I")
            count = self.unpack("Q")
            if itype in _SCALAR_FORMATS:
                size = struct.calcsize(_SCALAR_FORMATS[itype]) * count
                self._need(size)
                self.pos += size
            elif itype == _T_STRING:
                self.skip_strings(count)
            else:
                raise InputError(self.path, f"corrupt GGUF header: unsupported nested array type {itype}", where=self.where)
            return ("array", itype, count)
        raise InputError(self.path, f"corrupt GGUF header: unknown metadata value type {vtype}", where=self.where)


def read_gguf_header(path: str | os.PathLike[str], *, allow_partial: bool = False) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path`` without reading any tensor data.

    Raises :class:`InputError` for a missing file, a wrong magic, an unsupported version, a
    truncated or corrupt header, an unknown ggml type, or (unless ``allow_partial``, for a
    header-only download) a file shorter than the tensor data its header describes.
    """
    # NOTE: gguf.GGUFReader memory-maps the file and builds numpy views of every tensor; it reads
    # no data pages, but it fails on a header-only file, turns each of ~250K vocabulary strings
    # into numpy objects (seconds), and its errors are bare ValueErrors. This reader walks the
    # header with struct and only the gguf package's type tables; tests cross-check it against
    # GGUFReader.
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(p, "no such file")
    if os.path.isdir(p):
        raise InputError(p, "is a directory, not a GGUF file")
    file_size = os.path.getsize(p)
    sizes = _type_sizes()
    import gguf

    type_names = {int(t): t.name for t in gguf.GGML_QUANT_SIZES}
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise InputError(p, f"cannot open: {exc.strerror or exc}") from None
    with f:
        r = _Reader(f, p, file_size)
        if file_size < 4:
            raise InputError(p, f"not a GGUF file: only {file_size} bytes")
        magic = r.take(4)
        if magic != b"GGUF":
            raise InputError(p, f"not a GGUF file: magic {magic!r}, expected b'GGUF'")
        raw_version = r.unpack("I")
        if raw_version & 0xFFFF == 0 and raw_version != 0:  # written big-endian
            r.endian = ">"
            raw_version = struct.unpack(">I", struct.pack("<I", raw_version))[0]
        version = raw_version
        if version not in (2, 3):
            raise InputError(p, f"unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors, n_kv = r.unpack("QQ")
        # smallest possible records: a KV pair 8+0+4+1 bytes, a tensor info 8+0+4+8+4+8 bytes
        least = r.pos + 13 * n_kv + 32 * n_tensors
        if least > file_size:
            raise InputError(
                p,
                f"truncated GGUF header: {n_tensors} tensors and {n_kv} metadata keys need at least "
                f"{least} bytes, file has {file_size}",
            )
        kv: dict[str, Any] = {}
        for i in range(n_kv):
            r.where = f"metadata entry {i}"
            key = r.string()
            r.where = f"metadata key {key!r}"
            vtype = r.unpack("I")
            kv[key] = r.value(vtype)
        alignment = kv.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise InputError(p, f"corrupt GGUF header: general.alignment {alignment!r} is not a power of two")
        infos = []
        for i in range(n_tensors):
            r.where = f"tensor info {i}"
            name = r.string()
            r.where = f"tensor {name!r}"
            n_dims = r.unpack("I")
            if not 0 < n_dims <= _MAX_DIMS:
                raise InputError(p, f"corrupt GGUF header: {n_dims} dimensions", where=r.where)
            dims = r.unpack(f"{n_dims}Q")
            shape = (dims,) if isinstance(dims, int) else tuple(dims)
            type_id = r.unpack("I")
            offset = r.unpack("Q")
            tname = type_names.get(type_id)
            if tname is None:
                raise InputError(p, f"unknown ggml type id {type_id}", where=r.where)
            block, bsize = sizes[tname]
            if any(d <= 0 for d in shape) or shape[0] % block:
                raise InputError(
                    p, f"shape {list(shape)} does not fit type {tname} (block of {block})", where=r.where
                )
            n_el = 1
            for d in shape:
                n_el *= d
            if offset % alignment:
                raise InputError(p, f"tensor data offset {offset} is not {alignment}-aligned", where=r.where)
            infos.append(TensorInfo(name, shape, tname, n_el // block * bsize, offset))
        header_end = r.pos
    data_offset = -(-header_end // alignment) * alignment
    names = [t.name for t in infos]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(p, f"corrupt GGUF header: tensor {dup!r} appears twice")
    header = GGUFHeader(version, kv, tuple(infos), data_offset, alignment, file_size)
    if not allow_partial and data_offset + header.data_size > file_size:
        raise InputError(
            p,
            f"truncated GGUF file: tensor data ends at byte {data_offset + header.data_size}, "
            f"file has {file_size} (a header-only download needs allow_partial / --header-only)",
        )
    return header


# ---------------------------------------------------------------------------------------------
# header -> ModelSpec
# ---------------------------------------------------------------------------------------------

_BLK = re.compile(r"^blk\.(\d+)\.(.+)$")
_EXPERT_PARTS = ("gate", "up", "down", "gate_up")
_EXPERT_NAME = re.compile(r"^ffn_(gate_up|gate|up|down)_exps(?:\.(.+))?$")
_KV_NAMES = ("attn_k.weight", "attn_v.weight", "attn_kv_a_mqa.weight", "attn_kv_b.weight", "attn_k_b.weight")


def _scalar(v: Any) -> int | None:
    """An integer metadata value; per-layer arrays give their largest element."""
    if v is None:
        return None
    if isinstance(v, list):
        nums = [int(x) for x in v if isinstance(x, (int, float))]
        return max(nums) if nums else None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    return None


def spec_from_header(
    header: GGUFHeader,
    *,
    name: str,
    source: str,
    path: str | os.PathLike[str] | None = None,
    estimates: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> ModelSpec:
    """Build a :class:`ModelSpec` from GGUF metadata and tensor infos (a file's or a preset's)."""
    kv = header.kv
    arch = kv.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InputError(path, "GGUF header has no general.architecture")

    def key(k: str) -> Any:
        return kv.get(f"{arch}.{k}")

    n_layer = _scalar(key("block_count"))
    if not n_layer or n_layer <= 0:
        raise InputError(path, f"GGUF header has no {arch}.block_count")
    n_mtp = _scalar(key("nextn_predict_layers")) or 0
    n_main = n_layer - n_mtp

    per_layer: dict[int, list[TensorInfo]] = {}
    globals_: list[TensorInfo] = []
    for t in header.tensors:
        m = _BLK.match(t.name)
        if m:
            per_layer.setdefault(int(m.group(1)), []).append(t)
        else:
            globals_.append(t)
    bad = [i for i in per_layer if i >= n_layer]
    if bad:
        raise InputError(path, f"tensor of layer {min(bad)} but {arch}.block_count is {n_layer}")

    n_expert_kv = _scalar(key("expert_count"))
    n_expert_used = _scalar(key("expert_used_count"))
    total_bytes = sum(t.n_bytes for t in header.tensors)
    n_params = sum(t.n_elements for t in header.tensors)

    moe_layers: list[int] = []
    expert_bytes: list[int] = []
    expert_types: list[dict[str, str]] = []
    expert_ffs: list[int] = []
    routed_bytes = 0
    n_expert_seen: set[int] = set()
    mtp_layers = []
    for il in sorted(per_layer):
        exp = []
        for t in per_layer[il]:
            m = _EXPERT_NAME.match(_BLK.match(t.name).group(2))  # type: ignore[union-attr]
            if m:
                exp.append((m.group(1), m.group(2) or "weight", t))
        weights = [(part, t) for part, suffix, t in exp if suffix == "weight"]
        if not weights:
            continue
        if il >= n_main:
            mtp_layers.append(il)
            continue
        n_e = weights[0][1].shape[-1] if len(weights[0][1].shape) == 3 else None
        for _part, t in weights:
            if len(t.shape) != 3:
                raise InputError(path, f"expert tensor {t.name} has shape {list(t.shape)}, expected 3 dimensions")
            n_expert_seen.add(t.shape[-1])
        layer_bytes = sum(t.n_bytes for _p, _s, t in exp if t.shape[-1] == n_e)
        if n_e is None or layer_bytes % n_e:
            raise InputError(path, f"layer {il}: expert tensors of {layer_bytes} bytes do not split into {n_e} experts")
        routed_bytes += layer_bytes
        moe_layers.append(il)
        expert_bytes.append(layer_bytes // n_e)
        expert_types.append({part: t.ggml_type for part, t in sorted(weights, key=lambda x: _EXPERT_PARTS.index(x[0]))})
        shapes = dict(weights)
        if "gate" in shapes:
            expert_ffs.append(shapes["gate"].shape[1])
        elif "up" in shapes:
            expert_ffs.append(shapes["up"].shape[1])
        elif "gate_up" in shapes:
            expert_ffs.append(shapes["gate_up"].shape[1] // 2)
        else:
            expert_ffs.append(shapes["down"].shape[0])
    if not moe_layers:
        raise InputError(path, f"no MoE layers: no blk.N.ffn_*_exps tensors in this {arch} model")
    if len(n_expert_seen) != 1:
        raise InputError(path, f"expert tensors disagree on the expert count: {sorted(n_expert_seen)}")
    n_expert = n_expert_seen.pop()
    if n_expert_kv is not None and n_expert_kv != n_expert:
        raise InputError(path, f"{arch}.expert_count is {n_expert_kv} but expert tensors hold {n_expert} experts")
    if not n_expert_used:
        raise InputError(path, f"GGUF header has no {arch}.expert_used_count")
    if n_expert_used > n_expert:
        raise InputError(path, f"{arch}.expert_used_count {n_expert_used} exceeds expert_count {n_expert}")

    # hidden size and vocabulary
    embd = next((t for t in globals_ if t.name == "token_embd.weight"), None)
    hidden = _scalar(key("embedding_length")) or (embd.shape[0] if embd else 0)
    vocab = (embd.shape[1] if embd and len(embd.shape) == 2 else 0) or _scalar(key("vocab_size")) or 0
    if not vocab:
        toks = kv.get("tokenizer.ggml.tokens")
        vocab = toks[2] if isinstance(toks, tuple) else len(toks) if isinstance(toks, list) else 0

    # shared experts
    shexp_up = []
    for il in moe_layers:
        for t in per_layer[il]:
            if t.name.endswith(".ffn_up_shexp.weight") or t.name.endswith(".ffn_gate_shexp.weight"):
                shexp_up.append(t)
                break
    n_shared = _scalar(key("expert_shared_count")) or (1 if shexp_up else 0)
    shared_ff = _scalar(key("expert_shared_feed_forward_length")) or 0
    if not shared_ff and shexp_up and n_shared:
        shared_ff = shexp_up[0].shape[1] // n_shared if len(shexp_up[0].shape) >= 2 else 0

    # attention / KV-cache geometry
    kv_layers, rec_layers = [], []
    for il in range(n_main):
        names = {_BLK.match(t.name).group(2) for t in per_layer.get(il, [])}  # type: ignore[union-attr]
        recurrent = any(n.startswith("ssm_") for n in names)
        if recurrent:
            rec_layers.append(il)
        if any(n in names for n in _KV_NAMES) or ("attn_qkv.weight" in names and not recurrent):
            kv_layers.append(il)
    n_head = _scalar(key("attention.head_count")) or 0
    n_head_kv = _scalar(key("attention.head_count_kv")) or n_head
    head_dim = _scalar(key("attention.key_length")) or (hidden // n_head if n_head else 0)
    head_dim_v = _scalar(key("attention.value_length")) or 0
    est = list(estimates)
    kv_lora = _scalar(key("attention.kv_lora_rank"))
    if kv_lora:
        # NOTE: llama.cpp caches MLA layers in compressed form: one "head" of kv_lora_rank + rope
        # dims for K and kv_lora_rank for V (newer builds may keep V as a view of K: an upper bound).
        head_dim = kv_lora + (_scalar(key("rope.dimension_count")) or 0)
        head_dim_v = kv_lora
        n_head_kv = 1
        est.append("kv_bytes_per_token")
    if head_dim_v == head_dim:
        head_dim_v = 0

    # recurrent state (fixed size, f32 as llama.cpp allocates it by default)
    state = 0
    if rec_layers:
        kda_dim = _scalar(key("kda.head_dim"))
        conv = _scalar(key("ssm.conv_kernel")) or 0
        if kda_dim:  # Kimi Delta Attention: per head a d x d state; q, k, v short convolutions
            per = n_head * kda_dim * kda_dim + 3 * max(conv - 1, 0) * n_head * kda_dim
        else:  # Mamba-2 / Gated DeltaNet form of llama.cpp's n_embd_r() + n_embd_s()
            d_state = _scalar(key("ssm.state_size")) or 0
            d_inner = _scalar(key("ssm.inner_size")) or 0
            n_group = _scalar(key("ssm.group_count")) or 0
            per = max(conv - 1, 0) * (d_inner + 2 * n_group * d_state) + d_state * d_inner
        state = 4 * per * len(rec_layers)
        est.append("state_bytes")

    ffs = sorted(set(expert_ffs))
    ex: dict[str, Any] = {
        "gguf_version": header.version,
        "n_params": n_params,
        "total_bytes": total_bytes,
        "routed_expert_bytes": routed_bytes,
        "kv_layers": kv_layers,
        "recurrent_layers": rec_layers,
    }
    if len(ffs) > 1:
        ex["expert_ff_per_layer"] = expert_ffs
    if mtp_layers:
        # NOTE: MTP / NextN blocks are loaded but not run in the main decode pass: no routing to
        # trace, so their experts count as (host-resident) dense bytes.
        ex["mtp_layers"] = mtp_layers
    ftype = kv.get("general.file_type")
    if isinstance(ftype, int):
        ex["file_type"] = ftype
    if est:
        ex["estimates"] = sorted(set(est))
    if extra:
        ex.update(extra)
    return ModelSpec(
        name=name,
        arch=arch,
        n_layer=n_main,
        moe_layers=tuple(moe_layers),
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        hidden_size=hidden,
        expert_ff=expert_ffs[0],
        expert_bytes=tuple(expert_bytes),
        dense_bytes=total_bytes - routed_bytes,
        n_shared_expert=n_shared,
        shared_ff=shared_ff,
        expert_types=tuple(expert_types),
        n_kv_layers=len(kv_layers),
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_head=n_head,
        vocab_size=vocab,
        state_bytes=state,
        source=source,
        extra=ex,
        head_dim_v=head_dim_v,
        embd_bytes=embd.n_bytes if embd else 0,
    )


def spec_from_gguf(path: str | os.PathLike[str], *, allow_partial: bool = False) -> ModelSpec:
    """Read the :class:`ModelSpec` of the GGUF model at ``path`` from its header only."""
    header = read_gguf_header(path, allow_partial=allow_partial)
    p = Path(path)
    name = header.kv.get("general.name")
    return spec_from_header(
        header,
        name=p.stem if not isinstance(name, str) or not name else f"{name} ({p.name})",
        source=f"gguf:{p}",
        path=path,
    )


def _spec_from_json(path: str) -> ModelSpec:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON: {exc}") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):
        d = d["spec"]
    if not isinstance(d, dict):
        raise InputError(path, "expected a JSON object with a model spec")
    required = ("name", "arch", "n_layer", "moe_layers", "n_expert", "n_expert_used", "hidden_size",
                "expert_ff", "expert_bytes", "dense_bytes")
    missing = [k for k in required if k not in d]
    if missing:
        raise InputError(path, f"model spec lacks {', '.join(missing)}")
    try:
        spec = ModelSpec.from_dict(d)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f"bad model spec: {exc}") from None
    return spec.validate(path)


def load_model_spec(spec: str | os.PathLike[str], *, allow_partial: bool = False) -> ModelSpec:
    """A preset name, a ``.gguf`` path or a ``.json`` model spec -> :class:`ModelSpec`."""
    from hotexperts.presets import PRESETS, get_preset

    s = os.fspath(spec)
    if s in PRESETS:
        return get_preset(s)
    if os.path.exists(s):
        if s.lower().endswith(".json"):
            return _spec_from_json(s)
        got = spec_from_gguf(s, allow_partial=allow_partial)
        return got if allow_partial else got.validate(s)
    if s.lower().endswith((".gguf", ".json")) or os.sep in s:
        raise InputError(s, "no such file")
    raise InputError(None, f"unknown model {s!r}: not a file and not a preset (known presets: {', '.join(PRESETS)})")
