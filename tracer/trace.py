"""The one routing-trace schema of hotexperts and its binary file format (``.hxt``, version 1).

A :class:`Trace` holds, for every processed token, its phase (prefill or decode), request id,
ubatch (step) id, position, and for every MoE layer the ``top_k`` selected expert ids (and gate
weights when known). Expert ids are stored as ``uint8`` when ``n_expert <= 256`` and ``uint16``
otherwise, in one ``(n_tokens, n_layers, top_k)`` C-ordered array, so a step's ids for one layer
are ``experts[a:b, l]``.

The file layout (all little-endian) is documented in ``docs/trace-format.md``::

    bytes 0..7    magic  b"HXTRACE\\0"
    bytes 8..11   u32    format version (1)
    bytes 12..15  u32    flags (0)
    bytes 16..23  u64    header length H
    bytes 24..    H bytes of UTF-8 JSON: {"meta": {...}, "arrays": {name: {dtype, shape, offset, nbytes, crc32}}}
    then the arrays, each starting at a 64-byte aligned absolute offset.

Loading reads each array with one ``readinto`` (or maps it with ``mmap=True``) and validates
shapes, dtypes and id ranges; it never builds Python objects per token.
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path
from hotexperts.errors import InputError

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "PHASE_DECODE",
    "PHASE_PREFILL",
    "PHASE_NAMES",
    "Trace",
    "expert_dtype",
]

MAGIC = b"HXTRACE\0"
FORMAT_VERSION = 1
PHASE_PREFILL = 0
PHASE_DECODE = 1
PHASE_NAMES = ("prefill", "decode")
_ALIGN = 64
_PREAMBLE = struct.Struct("<8sIIQ")

# name -> (required, allowed dtypes, shape kind)
_PER_TOKEN = {"phase": np.uint8, "request": np.int32, "ubatch": np.int32, "pos": np.int32}


def expert_dtype(n_expert: int) -> np.dtype[Any]:
    """The smallest unsigned dtype that holds ids ``0 .. n_expert-1``."""
    if n_expert <= 0:
        raise ValueError(f"n_expert must be positive, got {n_expert}")
    if n_expert <= 256:
        return np.dtype(np.uint8)
    if n_expert <= 65536:
        return np.dtype(np.uint16)
    raise ValueError(f"n_expert={n_expert} is more than this format supports (65536)")


@dataclass(eq=False)
class Trace:
    """A routing trace: which experts every MoE layer selected for every processed token.

    Attributes:
        experts: ``(n_tokens, n_layers, top_k)`` expert ids (uint8/uint16).
        phase: ``(n_tokens,)`` uint8, :data:`PHASE_PREFILL` or :data:`PHASE_DECODE`.
        request: ``(n_tokens,)`` int32 request (sequence) id.
        ubatch: ``(n_tokens,)`` int32 step id, non-decreasing; the tokens of one
            ``llama_decode`` ubatch share an id (a decode token is a step of its own).
        pos: ``(n_tokens,)`` int32 position of the token in its sequence.
        n_expert: routed experts per layer.
        moe_layers: the model's layer index of each trace layer (length ``n_layers``).
        weights: optional ``(n_tokens, n_layers, top_k)`` float16 gate weights.
        present: optional ``(n_tokens, n_layers)`` bool; False where a (token, layer) was not
            recorded (e.g. llama.cpp skips the last layer for prompt tokens whose output is unused).
            ``None`` means everything is present. Absent entries hold id 0 and must be ignored.
        step_seconds: optional ``(n_tokens,)`` float32 wall time of the ``llama_decode`` call
            of the token's ubatch (NaN when unknown), repeated on every token of the ubatch.
        meta: JSON-serialisable metadata: ``model`` (model spec dict), ``source`` (how the trace
            was made), and anything else worth keeping.
    """

    experts: np.ndarray
    phase: np.ndarray
    request: np.ndarray
    ubatch: np.ndarray
    pos: np.ndarray
    n_expert: int
    moe_layers: tuple[int, ...]
    weights: np.ndarray | None = None
    present: np.ndarray | None = None
    step_seconds: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ shape
    @property
    def n_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    @property
    def n_prefill_tokens(self) -> int:
        return int(np.count_nonzero(self.phase == PHASE_PREFILL))

    @property
    def n_decode_tokens(self) -> int:
        return int(np.count_nonzero(self.phase == PHASE_DECODE))

    @property
    def n_requests(self) -> int:
        return int(np.unique(self.request).size) if self.n_tokens else 0

    def step_bounds(self) -> np.ndarray:
        """``(n_steps + 1,)`` int64 offsets: step ``s`` is tokens ``[b[s], b[s+1])``."""
        if self.n_tokens == 0:
            return np.zeros(1, dtype=np.int64)
        starts = np.flatnonzero(np.diff(self.ubatch)) + 1
        return np.concatenate(([0], starts, [self.n_tokens])).astype(np.int64)

    @property
    def n_steps(self) -> int:
        return int(self.step_bounds().size - 1)

    @property
    def ubatch_size(self) -> np.ndarray:
        """``(n_tokens,)`` size of each token's ubatch."""
        b = self.step_bounds()
        return np.repeat(np.diff(b), np.diff(b)).astype(np.int32)

    # ------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        experts: np.ndarray,
        *,
        n_expert: int,
        phase: Sequence[int] | np.ndarray | None = None,
        request: Sequence[int] | np.ndarray | None = None,
        ubatch: Sequence[int] | np.ndarray | None = None,
        pos: Sequence[int] | np.ndarray | None = None,
        moe_layers: Sequence[int] | None = None,
        weights: np.ndarray | None = None,
        present: np.ndarray | None = None,
        step_seconds: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
        validate: bool = True,
    ) -> Trace:
        """Build a trace from arrays, filling defaults: all decode, one request, one token per step,
        positions counted per request, MoE layers ``0..n_layers-1``."""
        ids = np.asarray(experts)
        if ids.ndim != 3:
            raise ValueError(f"experts must be (n_tokens, n_layers, top_k), got shape {ids.shape}")
        n = ids.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= n_expert):
            raise ValueError(f"expert ids must be in [0, {n_expert}), got [{ids.min()}, {ids.max()}]")
        ids = np.ascontiguousarray(ids, dtype=expert_dtype(n_expert))
        phase_a = np.full(n, PHASE_DECODE, np.uint8) if phase is None else np.asarray(phase, np.uint8)
        request_a = np.zeros(n, np.int32) if request is None else np.asarray(request, np.int32)
        ubatch_a = np.arange(n, dtype=np.int32) if ubatch is None else np.asarray(ubatch, np.int32)
        if pos is None:
            pos_a = _positions_per_request(request_a)
        else:
            pos_a = np.asarray(pos, np.int32)
        layers = tuple(range(ids.shape[1])) if moe_layers is None else tuple(int(x) for x in moe_layers)
        tr = cls(
            experts=ids,
            phase=np.ascontiguousarray(phase_a),
            request=np.ascontiguousarray(request_a),
            ubatch=np.ascontiguousarray(ubatch_a),
            pos=np.ascontiguousarray(pos_a),
            n_expert=int(n_expert),
            moe_layers=layers,
            weights=None if weights is None else np.ascontiguousarray(weights, np.float16),
            present=None if present is None else np.ascontiguousarray(present, np.bool_),
            step_seconds=None if step_seconds is None else np.ascontiguousarray(step_seconds, np.float32),
            meta=dict(meta or {}),
        )
        if validate:
            tr.validate()
            tr.check_distinct()
        return tr

    def check_distinct(self, path: str | os.PathLike[str] | None = None) -> None:
        """Raise :class:`InputError` if a token routes one expert twice in a layer (top-k ids are distinct).

        Run where routing enters (``from_arrays``: every reader, capture, synthesis); a saved ``.hxt`` was
        checked when it was made and its CRC-32 guards it since. About 1.3 s for 1M tokens x 48 layers x 8.
        """
        ids = self.experts
        k = ids.shape[2] if ids.ndim == 3 else 0
        where = path
        if k > self.n_expert:
            raise InputError(where, f"top-{k} routing with only {self.n_expert} experts per layer: ids must be distinct")
        if k < 2 or ids.shape[0] == 0:
            return
        planes = np.ascontiguousarray(np.moveaxis(ids, 2, 0))
        bad = np.zeros(ids.shape[:2], np.bool_)
        for i in range(k):
            for j in range(i + 1, k):
                bad |= planes[i] == planes[j]
        if self.present is not None:
            bad &= self.present
        if bool(bad.any()):
            t, ly = (int(x[0]) for x in np.nonzero(bad))
            raise InputError(where, f"token {t} routes an expert twice in MoE layer {self.moe_layers[ly]} "
                                    f"(ids {ids[t, ly].tolist()}): the top-k ids of a selection must be distinct")

    # -------------------------------------------------------------- validation
    def validate(self, path: str | os.PathLike[str] | None = None) -> None:
        """Check shapes, dtypes, id ranges and step structure; raise :class:`InputError` if wrong."""

        def bad(what: str) -> InputError:
            return InputError(path if path is not None else "<trace>", what)

        ids = self.experts
        if ids.ndim != 3:
            raise bad(f"experts array has {ids.ndim} dimensions, expected 3 (tokens, layers, top_k)")
        n, n_layers, k = ids.shape
        if self.n_expert <= 0:
            raise bad(f"n_expert must be positive, got {self.n_expert}")
        want = expert_dtype(self.n_expert)
        if ids.dtype != want:
            raise bad(f"experts dtype {ids.dtype} does not match n_expert={self.n_expert} (expected {want})")
        if n_layers == 0 or k == 0:
            raise bad(f"experts array has an empty dimension: shape {ids.shape}")
        if k > self.n_expert:
            raise bad(f"top-{k} routing with only {self.n_expert} experts per layer")
        if len(self.moe_layers) != n_layers:
            raise bad(f"{len(self.moe_layers)} MoE layer ids for {n_layers} trace layers")
        if len(set(self.moe_layers)) != n_layers or any(x < 0 for x in self.moe_layers):
            raise bad(f"MoE layer ids must be distinct and non-negative: {list(self.moe_layers)}")
        if list(self.moe_layers) != sorted(self.moe_layers):
            raise bad(f"MoE layer ids must be increasing: {list(self.moe_layers)}")
        for name, dtype in _PER_TOKEN.items():
            a = getattr(self, name)
            if a.shape != (n,):
                raise bad(f"{name} has shape {a.shape}, expected ({n},)")
            if a.dtype != dtype:
                raise bad(f"{name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if n == 0:
            return
        if self.n_expert < 256 or want == np.uint16:
            hi = int(ids.max())
            if hi >= self.n_expert:
                raise bad(f"expert id {hi} out of range for n_expert={self.n_expert}")
        if int(self.phase.max()) > PHASE_DECODE:
            raise bad(f"unknown phase code {int(self.phase.max())} (0 = prefill, 1 = decode)")
        if n > 1 and bool(np.any(np.diff(self.ubatch) < 0)):
            raise bad("ubatch ids must be non-decreasing (tokens in processing order)")
        if int(self.pos.min()) < 0:
            raise bad("negative token position")
        b = self.step_bounds()
        # a ubatch has one phase
        if bool(np.any(self.phase[b[:-1]] != np.maximum.reduceat(self.phase, b[:-1]))) or bool(
            np.any(self.phase[b[:-1]] != np.minimum.reduceat(self.phase, b[:-1]))
        ):
            raise bad("a ubatch mixes prefill and decode tokens")
        if self.weights is not None and self.weights.shape != ids.shape:
            raise bad(f"weights shape {self.weights.shape} differs from experts shape {ids.shape}")
        if self.present is not None and self.present.shape != (n, n_layers):
            raise bad(f"present mask shape {self.present.shape}, expected ({n}, {n_layers})")
        if self.step_seconds is not None and self.step_seconds.shape != (n,):
            raise bad(f"step_seconds shape {self.step_seconds.shape}, expected ({n},)")

    # ------------------------------------------------------------------ views
    def layer(self, layer: int) -> np.ndarray:
        """``(n_tokens, top_k)`` ids of trace layer ``layer`` (a view)."""
        return self.experts[:, layer, :]

    def select(self, mask: np.ndarray) -> Trace:
        """A new trace holding the tokens where ``mask`` is True (steps stay whole if the mask does)."""
        m = np.asarray(mask, bool)
        return Trace(
            experts=np.ascontiguousarray(self.experts[m]),
            phase=self.phase[m].copy(),
            request=self.request[m].copy(),
            ubatch=self.ubatch[m].copy(),
            pos=self.pos[m].copy(),
            n_expert=self.n_expert,
            moe_layers=self.moe_layers,
            weights=None if self.weights is None else np.ascontiguousarray(self.weights[m]),
            present=None if self.present is None else np.ascontiguousarray(self.present[m]),
            step_seconds=None if self.step_seconds is None else self.step_seconds[m].copy(),
            meta=dict(self.meta),
        )

    def decode_only(self) -> Trace:
        return self.select(self.phase == PHASE_DECODE)

    def to_frame(self, *, long: bool = False) -> Any:
        """A pandas view for analysis.

        Wide (default): one row per (token, layer) with columns ``token, phase, request, ubatch,
        pos, layer, e0..e{k-1}`` (and ``w0..`` when gate weights are known); absent entries dropped.
        ``long=True``: one row per routed selection with columns ``token, phase, request, ubatch,
        pos, layer, slot, expert`` (and ``weight``).
        """
        import pandas as pd

        n, nl, k = self.experts.shape
        tok = np.repeat(np.arange(n, dtype=np.int64), nl)
        lay = np.tile(np.asarray(self.moe_layers, dtype=np.int32), n)
        cols: dict[str, Any] = {
            "token": tok,
            "phase": pd.Categorical.from_codes(self.phase[tok].astype(np.int8), dtype=pd.CategoricalDtype(list(PHASE_NAMES))),
            "request": self.request[tok],
            "ubatch": self.ubatch[tok],
            "pos": self.pos[tok],
            "layer": lay,
        }
        flat = self.experts.reshape(n * nl, k)
        wflat = None if self.weights is None else self.weights.reshape(n * nl, k)
        if not long:
            for j in range(k):
                cols[f"e{j}"] = flat[:, j]
            if wflat is not None:
                for j in range(k):
                    cols[f"w{j}"] = wflat[:, j].astype(np.float32)
            df = pd.DataFrame(cols)
            if self.present is not None:
                df = df[self.present.reshape(-1)].reset_index(drop=True)
            return df
        rep: dict[str, Any] = {name: np.repeat(np.asarray(v), k) for name, v in cols.items() if name != "phase"}
        rep["phase"] = pd.Categorical.from_codes(
            np.repeat(self.phase[tok].astype(np.int8), k), dtype=pd.CategoricalDtype(list(PHASE_NAMES))
        )
        rep["slot"] = np.tile(np.arange(k, dtype=np.int8), n * nl)
        rep["expert"] = flat.reshape(-1)
        if wflat is not None:
            rep["weight"] = wflat.reshape(-1).astype(np.float32)
        df = pd.DataFrame(rep)[
            ["token", "phase", "request", "ubatch", "pos", "layer", "slot", "expert"]
            + (["weight"] if wflat is not None else [])
        ]
        if self.present is not None:
            df = df[np.repeat(self.present.reshape(-1), k)].reset_index(drop=True)
        return df

    def counts(self, *, phase: int | None = None) -> np.ndarray:
        """``(n_layers, n_expert)`` int64 selection counts (absent entries excluded)."""
        ids = self.experts
        keep = np.ones(self.n_tokens, bool) if phase is None else self.phase == phase
        out = np.zeros((self.n_layers, self.n_expert), np.int64)
        for layer in range(self.n_layers):
            sel = ids[keep, layer, :]
            if self.present is not None:
                sel = sel[self.present[keep, layer]]
            out[layer] = np.bincount(sel.reshape(-1), minlength=self.n_expert)
        return out

    # ---------------------------------------------------------------- file I/O
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "experts": self.experts,
            "phase": self.phase,
            "request": self.request,
            "ubatch": self.ubatch,
            "pos": self.pos,
        }
        if self.weights is not None:
            arrays["weights"] = self.weights
        if self.present is not None:
            arrays["present"] = self.present
        if self.step_seconds is not None:
            arrays["step_seconds"] = self.step_seconds
        return arrays

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace atomically (temporary file, then rename) in ``.hxt`` format."""
        self.validate()
        arrays = self._arrays()
        directory: dict[str, dict[str, Any]] = {}
        meta = dict(self.meta)
        header_obj: dict[str, Any] = {
            "format": "hotexperts-trace",
            "version": FORMAT_VERSION,
            "n_expert": self.n_expert,
            "top_k": self.top_k,
            "n_tokens": self.n_tokens,
            "moe_layers": list(self.moe_layers),
            "meta": meta,
            "arrays": directory,
        }
        # Two passes: offsets depend on the header length, which depends on the offsets' digits.
        for name, a in arrays.items():
            directory[name] = {
                "dtype": a.dtype.str,
                "shape": list(a.shape),
                "offset": 0,
                "nbytes": int(a.nbytes),
                "crc32": zlib.crc32(_bytes_view(a)) & 0xFFFFFFFF,
            }
        for _ in range(3):
            header = json.dumps(header_obj, separators=(",", ":"), sort_keys=True).encode()
            off = _align(_PREAMBLE.size + len(header))
            for name, a in arrays.items():
                directory[name]["offset"] = off
                off = _align(off + a.nbytes)
        header = json.dumps(header_obj, separators=(",", ":"), sort_keys=True).encode()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header)))
            fh.write(header)
            for name, a in arrays.items():
                fh.seek(directory[name]["offset"])
                fh.write(_bytes_view(a))
            fh.truncate(_align(fh.tell()))
            fh.flush()
            os.fsync(fh.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False, verify: bool | None = None) -> Trace:
        """Read and validate a ``.hxt`` trace.

        Args:
            mmap: map the arrays read-only instead of reading them into memory.
            verify: check every array's CRC-32 (one extra pass over the data, about 0.2 s for 1M tokens x 48
                layers x top-8). Default: on, unless the environment sets ``HOTEXPERTS_NO_VERIFY=1``.
        """
        if verify is None:
            verify = os.environ.get("HOTEXPERTS_NO_VERIFY", "") not in ("1", "true", "yes")
        p = Path(path)
        try:
            st = p.stat()
            size = st.st_size
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                # NOTE: a FIFO or a device would block or never end
                raise InputError(p, "not a regular file")
            fh = open(p, "rb")
        except FileNotFoundError:
            raise InputError(p, "no such file") from None
        except IsADirectoryError:
            raise InputError(p, "is a directory, not a trace file") from None
        except OSError as exc:
            raise InputError(p, f"cannot open: {exc.strerror}") from None
        with fh:
            pre = fh.read(_PREAMBLE.size)
            if len(pre) < _PREAMBLE.size:
                raise InputError(p, f"empty or truncated file ({size} bytes): not a hotexperts trace")
            magic, version, _flags, hlen = _PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise InputError(
                    p, f"not a hotexperts trace (magic {magic!r}); import other formats with `hotexperts trace import`"
                )
            if version != FORMAT_VERSION:
                raise InputError(p, f"trace format version {version} is not supported (this build reads {FORMAT_VERSION})")
            if hlen > size - _PREAMBLE.size:
                raise InputError(p, f"truncated file: header of {hlen} bytes but only {size} bytes in the file")
            raw = fh.read(hlen)
            try:
                hdr = json.loads(raw.decode("utf-8"))
                directory = hdr["arrays"]
                n_expert = int(hdr["n_expert"])
                moe_layers = tuple(int(x) for x in hdr["moe_layers"])
                meta = dict(hdr.get("meta") or {})
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise InputError(p, f"corrupt header ({type(exc).__name__}: {exc})") from None
            missing = [k for k in ("experts", *_PER_TOKEN) if k not in directory]
            if missing:
                raise InputError(p, f"corrupt header: missing arrays {missing}")
            unknown = sorted(set(directory) - {"experts", "weights", "present", "step_seconds", *_PER_TOKEN})
            if unknown:
                raise InputError(p, f"corrupt header: unknown arrays {unknown}")
            arrays: dict[str, np.ndarray] = {}
            for name, d in directory.items():
                try:
                    dtype = np.dtype(d["dtype"])
                    shape = tuple(int(x) for x in d["shape"])
                    offset, nbytes = int(d["offset"]), int(d["nbytes"])
                except (KeyError, TypeError, ValueError) as exc:
                    raise InputError(p, f"corrupt header entry for array {name!r}: {exc}") from None
                if any(s < 0 for s in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != nbytes:
                    raise InputError(p, f"corrupt header: array {name!r} shape {list(shape)} does not match {nbytes} bytes")
                if offset < _PREAMBLE.size + hlen or offset + nbytes > size:
                    raise InputError(
                        p,
                        f"truncated file: array {name!r} needs bytes {offset}..{offset + nbytes} but the file has {size}",
                    )
                if mmap:
                    a = np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape) if nbytes else np.empty(shape, dtype)
                else:
                    a = np.empty(shape, dtype=dtype)
                    fh.seek(offset)
                    got = fh.readinto(_bytes_view(a, contiguous=True)) if nbytes else 0
                    if got != nbytes:
                        raise InputError(p, f"truncated file: array {name!r} short read ({got} of {nbytes} bytes)")
                if verify and "crc32" in d:
                    crc = zlib.crc32(_bytes_view(a)) & 0xFFFFFFFF
                    if crc != int(d["crc32"]):
                        raise InputError(p, f"corrupt data: array {name!r} fails its CRC-32 check")
                arrays[name] = a
        tr = cls(
            experts=arrays["experts"],
            phase=arrays["phase"],
            request=arrays["request"],
            ubatch=arrays["ubatch"],
            pos=arrays["pos"],
            n_expert=n_expert,
            moe_layers=moe_layers,
            weights=arrays.get("weights"),
            present=arrays.get("present"),
            step_seconds=arrays.get("step_seconds"),
            meta=meta,
        )
        if tr.experts.ndim == 3 and int(hdr.get("top_k", tr.top_k)) != tr.top_k:
            raise InputError(p, f"header says top_k={hdr.get('top_k')} but the experts array has {tr.top_k}")
        tr.validate(p)
        return tr

    # ------------------------------------------------------------- comparison
    def equals(self, other: Trace, *, meta: bool = False) -> bool:
        """True when both traces hold the same routing (and optional arrays); metadata only if ``meta``."""
        if self.n_expert != other.n_expert or self.moe_layers != other.moe_layers:
            return False
        for name in ("experts", "phase", "request", "ubatch", "pos"):
            if not np.array_equal(getattr(self, name), getattr(other, name)):
                return False
        for name in ("weights", "present", "step_seconds"):
            a, b = getattr(self, name), getattr(other, name)
            if (a is None) != (b is None):
                return False
            if a is not None and not np.array_equal(a, b, equal_nan=name != "present"):
                return False
        return not meta or self.meta == other.meta

    def iter_steps(self) -> Iterator[tuple[int, int]]:
        """Yield ``(start, stop)`` token ranges of each step (ubatch)."""
        b = self.step_bounds()
        for s in range(b.size - 1):
            yield int(b[s]), int(b[s + 1])

    def __repr__(self) -> str:
        return (
            f"Trace(n_tokens={self.n_tokens}, prefill={self.n_prefill_tokens}, decode={self.n_decode_tokens}, "
            f"n_layers={self.n_layers}, top_k={self.top_k}, n_expert={self.n_expert}, steps={self.n_steps})"
        )


def _bytes_view(a: np.ndarray, *, contiguous: bool = False) -> memoryview:
    """A flat byte view of an array (no copy when it is already C-contiguous)."""
    arr = a if contiguous else np.ascontiguousarray(a)
    return memoryview(arr.data).cast("B")


def _align(x: int) -> int:
    return (x + _ALIGN - 1) // _ALIGN * _ALIGN


def _positions_per_request(request: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... counted separately for each request id, in order of appearance."""
    pos = np.zeros(request.shape[0], np.int32)
    order = np.argsort(request, kind="stable")
    r_sorted = request[order]
    if r_sorted.size:
        starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
        run_id = np.cumsum(np.r_[True, r_sorted[1:] != r_sorted[:-1]]) - 1
        pos[order] = (np.arange(r_sorted.size) - starts[run_id]).astype(np.int32)
    return pos
