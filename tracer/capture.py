"""Record real expert routing from a GGUF MoE model run through llama.cpp (llama-cpp-python).

How it works (formats.md section 6): llama.cpp names the selected-experts tensor of layer ``il``
``ffn_moe_topk-<il>`` (a strided view of the router's descending argsort, ``ne = [k, n_rows]``)
and the router probabilities of the selected experts ``ffn_moe_weights-<il>`` (``[1, k, n_rows]``).
The context parameter ``cb_eval`` (a ``ggml_backend_sched_eval_callback``) is asked for every graph
node (``ask=True``); for the nodes we claim, the scheduler calls it again once the node is computed
(``ask=False``), and ``ggml_backend_tensor_get`` (libggml-base) copies the bytes to host memory on
any backend. We read ``ne``/``nb``/``type`` from the ``ggml_tensor`` struct (layout of the ggml
vendored in llama-cpp-python 0.3.x, checked at run time against ``ggml_tensor_overhead`` and
``ggml_get_name``) and index the copied bytes with the tensor's own strides.

The prompt is fed in chunks of ``n_ubatch`` tokens, one ``llama_decode`` call per chunk, so each
call is exactly one ubatch (llama.cpp would split a larger batch into the same ubatches), and each
decode step is one call of one token. Per token we keep phase, request, ubatch id, position, the
ids of every MoE layer, the gate weights when the graph has them, and the wall time of its call.

The last layer: llama.cpp drops the rows whose logits are not requested before the last layer's
FFN (``inp_out_ids``), so for a prompt ubatch that layer routes only the token(s) with an output.
Those (token, layer) entries are marked absent in :attr:`Trace.present` unless ``output_all``
asks for logits on every prompt token.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace

__all__ = [
    "CaptureResult",
    "capture",
    "capture_from_args",
    "gguf_moe_header",
    "read_prompt_file",
    "run_capture",
]

_TOPK_RE = re.compile(r"^ffn_moe_topk-(\d+)$")
_WEIGHTS_RE = re.compile(r"^ffn_moe_weights-(\d+)$")

_GGML_TYPE_F32 = 0
_GGML_TYPE_F16 = 1
_GGML_TYPE_I32 = 26
_NP_TYPES: dict[int, np.dtype[Any]] = {
    _GGML_TYPE_F32: np.dtype("<f4"),
    _GGML_TYPE_F16: np.dtype("<f2"),
    _GGML_TYPE_I32: np.dtype("<i4"),
}
_GGML_OBJECT_SIZE = 32  # sizeof(struct ggml_object) in ggml.c: offs, size, next, type, padding[4]


class _GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor`` of ggml.h (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10,
    GGML_MAX_NAME 64), as vendored in llama-cpp-python 0.3.36."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_NAME_OFFSET = _GgmlTensor.name.offset


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _ModelHeader:
    arch: str
    n_layer: int
    n_expert: int
    n_expert_used: int
    moe_layers: tuple[int, ...]


def gguf_moe_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture, layer count, expert counts and MoE layer ids of a GGUF file (header only).

    Raises :class:`InputError` for a missing or non-GGUF file and for a model without MoE layers.
    """
    h = _read_header(Path(path))
    return {
        "arch": h.arch,
        "n_layer": h.n_layer,
        "n_expert": h.n_expert,
        "n_expert_used": h.n_expert_used,
        "moe_layers": list(h.moe_layers),
    }


def extra_bufts_off_by_env() -> bool:
    """``HOTEXPERTS_NO_EXTRA_BUFTS`` set to anything but ``""`` or ``0``: llama.cpp's extra CPU buffer types off."""
    return os.environ.get("HOTEXPERTS_NO_EXTRA_BUFTS", "0") not in ("", "0")


def _check_magic(p: Path) -> None:
    """Raise :class:`InputError` unless ``p`` is a readable file that starts like a GGUF model."""
    if not p.exists():
        raise InputError(p, "no such file")
    if p.is_dir():
        raise InputError(p, "is a directory, not a GGUF model")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(p, f"cannot open: {exc.strerror}") from None
    if magic != b"GGUF":
        raise InputError(p, f"not a GGUF model file (magic {magic!r}, expected b'GGUF')")


def _read_header(p: Path) -> _ModelHeader:
    _check_magic(p)
    import gguf

    try:
        reader = gguf.GGUFReader(p, "r")
    except Exception as exc:  # noqa: BLE001 - the gguf reader raises many kinds on a corrupt file
        raise InputError(p, f"corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from None

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # noqa: BLE001
            return None

    arch = field_value("general.architecture")
    if not isinstance(arch, str):
        raise InputError(p, "GGUF file has no general.architecture")
    n_layer = field_value(f"{arch}.block_count")
    n_expert = field_value(f"{arch}.expert_count")
    n_used = field_value(f"{arch}.expert_used_count")
    if isinstance(n_used, list):  # per-layer array form
        n_used = max(n_used) if n_used else None
    moe_layers: set[int] = set()
    for t in reader.tensors:
        m = re.match(r"^blk\.(\d+)\.ffn_gate_inp\.weight$", t.name)
        if m:
            moe_layers.add(int(m.group(1)))
    if not n_expert or not n_used or not moe_layers:
        raise InputError(
            p, f"not a mixture-of-experts model (architecture {arch!r} without expert_count/router tensors)"
        )
    return _ModelHeader(
        arch=arch,
        n_layer=int(n_layer or (max(moe_layers) + 1)),
        n_expert=int(n_expert),
        n_expert_used=int(n_used),
        moe_layers=tuple(sorted(moe_layers)),
    )


def read_prompt_file(path: str | os.PathLike[str]) -> list[str]:
    """Prompts from a file: JSONL objects with a ``prompt`` key, or one prompt per non-empty line.

    The file is read as JSONL when its first non-empty line starts with ``{``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(p, "no such file") from None
    except IsADirectoryError:
        raise InputError(p, "is a directory, not a prompt file") from None
    except UnicodeDecodeError as exc:
        raise InputError(p, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(p, f"cannot open: {exc.strerror}") from None
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise InputError(p, "no prompts in the file (it is empty)")
    if not lines[0][1].lstrip().startswith("{"):
        return [ln for _, ln in lines]
    prompts: list[str] = []
    for lineno, ln in lines:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError as exc:
            raise InputError(p, f"invalid JSON ({exc.msg})", where=f"line {lineno}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise InputError(p, "a JSONL prompt line needs a string 'prompt' key", where=f"line {lineno}")
        if not obj["prompt"]:
            raise InputError(p, "empty prompt", where=f"line {lineno}")
        prompts.append(obj["prompt"])
    return prompts


# --------------------------------------------------------------------------- llama.cpp glue


class _Libs:
    """llama-cpp-python's bindings plus the few libggml-base functions it does not bind."""

    _instance: _Libs | None = None

    def __init__(self) -> None:
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - dependency is required by the package
            raise InputError(None, f"llama-cpp-python is not installed ({exc})") from None
        self.llama = llama_cpp
        self.version = str(getattr(llama_cpp, "__version__", "unknown"))
        lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
        candidates = [lib_dir / n for n in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll")]
        path = next((c for c in candidates if c.exists()), None)
        if path is None:  # pragma: no cover - depends on the install
            raise RuntimeError(f"libggml-base not found in {lib_dir}")
        g = ctypes.CDLL(str(path))
        g.ggml_backend_tensor_get.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_size_t,
        ]
        g.ggml_backend_tensor_get.restype = None
        g.ggml_nbytes.argtypes = [ctypes.c_void_p]
        g.ggml_nbytes.restype = ctypes.c_size_t
        g.ggml_get_name.argtypes = [ctypes.c_void_p]
        g.ggml_get_name.restype = ctypes.c_void_p
        g.ggml_tensor_overhead.argtypes = []
        g.ggml_tensor_overhead.restype = ctypes.c_size_t
        self.ggml = g
        # NOTE: the struct layout is declared by hand; a ggml with a different layout must fail
        # loudly here, never read garbage.
        want = g.ggml_tensor_overhead() - _GGML_OBJECT_SIZE
        if want != ctypes.sizeof(_GgmlTensor):
            raise RuntimeError(
                f"ggml_tensor is {want} bytes in this llama.cpp build but {ctypes.sizeof(_GgmlTensor)} in "
                f"hotexperts' declaration: unsupported llama-cpp-python version {self.version}"
            )
        self.log_lines: list[str] = []
        # NOTE: lines of llama.cpp's log kept for error messages; a caller that inspects a whole
        # model load (hotexperts.llamabench: tensor placement) raises it for that call.
        self.log_keep = 20

        def _log(level: int, text: bytes | None, user_data: Any) -> None:
            if text:
                self.log_lines.append(text.decode("utf-8", "replace"))
                del self.log_lines[: -self.log_keep]

        # NOTE: keep a reference: ctypes callbacks must outlive their registration.
        self._log_cb = llama_cpp.llama_log_callback(_log)
        llama_cpp.llama_log_set(self._log_cb, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()

    @classmethod
    def get(cls) -> _Libs:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def last_error(self) -> str:
        lines = [ln.strip() for ln in self.log_lines if ln.strip()]
        bad = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
        return (bad or lines or ["no message"])[-1]


class _Recorder:
    """State shared with the ``cb_eval`` callback: the routing of the ubatch being computed."""

    def __init__(self, libs: _Libs, moe_layers: Sequence[int], record_weights: bool) -> None:
        self.ggml = libs.ggml
        self.layer_index = {il: j for j, il in enumerate(moe_layers)}
        self.record_weights = record_weights
        self.ids: dict[int, np.ndarray] = {}
        self.weights: dict[int, np.ndarray] = {}
        self.error: BaseException | None = None
        self.checked_layout = False
        self.cb = libs.llama.ggml_backend_sched_eval_callback(self._callback)

    def reset(self) -> None:
        self.ids = {}
        self.weights = {}

    def _read(self, tp: int) -> np.ndarray:
        """The tensor at address ``tp`` as a ``(ne3, ne2, ne1, ne0)`` array, read with its strides."""
        t = _GgmlTensor.from_address(tp)
        if not self.checked_layout:
            if self.ggml.ggml_get_name(tp) != tp + _NAME_OFFSET:
                raise RuntimeError(
                    "ggml_tensor layout mismatch (name offset): unsupported llama-cpp-python version"
                )
            self.checked_layout = True
        dt = _NP_TYPES.get(t.type)
        if dt is None:
            raise RuntimeError(f"unexpected ggml type {t.type} for tensor {t.name.decode()}")
        ne = tuple(int(x) for x in t.ne)
        nb = tuple(int(x) for x in t.nb)
        shape = (ne[3], ne[2], ne[1], ne[0])
        if min(ne) <= 0:
            return np.zeros(shape, dt)
        nbytes = int(self.ggml.ggml_nbytes(tp))
        buf = np.empty(nbytes, np.uint8)
        self.ggml.ggml_backend_tensor_get(tp, buf.ctypes.data, 0, nbytes)
        view = np.lib.stride_tricks.as_strided(
            buf.view(dt) if nbytes % dt.itemsize == 0 else buf[: nbytes - nbytes % dt.itemsize].view(dt),
            shape=shape,
            strides=(nb[3], nb[2], nb[1], nb[0]),
            writeable=False,
        )
        return np.array(view)

    def _match(self, tp: int) -> tuple[int, bool] | None:
        """``(layer, is_weights)`` when the tensor at ``tp`` is one we record, else None."""
        # NOTE: called for every graph node: a cheap prefix test before any regex.
        raw = ctypes.string_at(tp + _NAME_OFFSET, 32)
        if raw[:8] != b"ffn_moe_":
            return None
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        m = _TOPK_RE.match(name)
        is_w = False
        if m is None and self.record_weights:
            m = _WEIGHTS_RE.match(name)
            is_w = m is not None
        if m is None or int(m.group(1)) not in self.layer_index:
            return None
        return int(m.group(1)), is_w

    def _callback(self, tp: int, ask: bool, user_data: Any) -> bool:
        try:
            hit = self._match(tp)
            if ask:
                return hit is not None
            if hit is None:
                return True
            il, is_w = hit
            a = self._read(tp)
            if is_w:  # [1, k, n_rows] -> (n_rows, k)
                self.weights[il] = a[0].reshape(a.shape[1], a.shape[2] * a.shape[3])
            else:  # [k, n_rows] -> (n_rows, k)
                self.ids[il] = a[0, 0]
            return True
        except BaseException as exc:  # noqa: BLE001 - never let an exception cross the C boundary
            self.error = exc
            return False  # returning False on ask=False aborts the graph computation


# --------------------------------------------------------------------------- capture


@dataclass
class CaptureResult:
    """What :func:`run_capture` produced: the trace, and the token id of every trace row."""

    trace: Trace
    tokens: np.ndarray
    generated: list[list[int]] = field(default_factory=list)


def capture(
    model_path: str | os.PathLike[str],
    prompts: Sequence[str],
    *,
    n_predict: int = 128,
    n_ctx: int = 4096,
    n_batch: int = 512,
    n_ubatch: int = 512,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    seed: int | None = None,
    temp: float = 0.8,
    output_all: bool = False,
    record_weights: bool = True,
    extra_bufts: bool = True,
    progress: bool = False,
) -> Trace:
    """Run ``prompts`` through the model (each a separate request) and return the routing trace.

    See :func:`run_capture` for the arguments.
    """
    return run_capture(
        model_path,
        prompts,
        n_predict=n_predict,
        n_ctx=n_ctx,
        n_batch=n_batch,
        n_ubatch=n_ubatch,
        n_threads=n_threads,
        n_gpu_layers=n_gpu_layers,
        seed=seed,
        temp=temp,
        output_all=output_all,
        record_weights=record_weights,
        extra_bufts=extra_bufts,
        progress=progress,
    ).trace


def run_capture(
    model_path: str | os.PathLike[str],
    prompts: Sequence[str | Sequence[int]],
    *,
    n_predict: int = 128,
    n_ctx: int = 4096,
    n_batch: int = 512,
    n_ubatch: int = 512,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
    seed: int | None = None,
    temp: float = 0.8,
    output_all: bool = False,
    record_weights: bool = True,
    extra_bufts: bool = True,
    progress: bool = False,
) -> CaptureResult:
    """Capture routing and also return the token id of every trace row.

    Args:
        model_path: GGUF MoE model.
        prompts: one request each; the KV cache is cleared between requests. A prompt is a text
            (tokenized with the model's vocabulary, BOS added as the model asks) or a sequence of
            token ids fed as they are.
        n_predict: tokens to generate (decode steps) per request; generation stops earlier at an
            end-of-generation token or when the context is full.
        n_ctx, n_batch, n_ubatch, n_threads, n_gpu_layers: llama.cpp context/model parameters.
            The prompt is fed in ubatches of ``min(n_batch, n_ubatch)`` tokens.
        seed: ``None`` = greedy decoding; else sample with this seed at temperature ``temp``.
        output_all: request logits for every prompt token, so that the last layer routes (and
            the trace records) every prompt token; by default only the prompt's last token.
        record_weights: also record the router probabilities of the selected experts
            (``ffn_moe_weights``, before top-k renormalisation).
        extra_bufts: let llama.cpp use its extra CPU buffer types (AMX, repacked weights); the
            environment variable ``HOTEXPERTS_NO_EXTRA_BUFTS=1`` also turns them off.
        progress: show a tqdm bar over tokens.
    """
    model_p = Path(model_path)
    header = _read_header(model_p)
    prompts = list(prompts)
    if not prompts:
        raise InputError(None, "no prompts given")
    for i, pr in enumerate(prompts):
        if len(pr) == 0:
            raise InputError(None, f"prompt {i + 1} is empty")
    if n_predict < 0:
        raise InputError(None, f"--n-predict must be >= 0, got {n_predict}")
    if n_ctx < 8 or n_batch < 1 or n_ubatch < 1:
        raise InputError(None, f"bad context sizes: ctx={n_ctx}, batch={n_batch}, ubatch={n_ubatch}")

    libs = _Libs.get()
    lc = libs.llama
    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = int(n_gpu_layers)
    # NOTE: llama.cpp's "extra" CPU buffer types (AMX, repacked weights) can die with SIGILL where
    # the CPU reports AMX but the sandbox/kernel does not grant it; this switch turns them off.
    if not extra_bufts or extra_bufts_off_by_env():
        mparams.use_extra_bufts = False
    libs.log_lines.clear()
    model = lc.llama_model_load_from_file(os.fsencode(model_p), mparams)
    if not model:
        raise InputError(model_p, f"llama.cpp could not load the model: {libs.last_error()}")
    rec = _Recorder(libs, header.moe_layers, record_weights)
    ctx = None
    smpl = None
    batch = None
    try:
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = int(max(n_batch, n_ubatch))
        cparams.n_ubatch = int(min(n_batch, n_ubatch))
        cparams.n_seq_max = 1
        if n_threads is not None:
            cparams.n_threads = int(n_threads)
            cparams.n_threads_batch = int(n_threads)
        cparams.cb_eval = rec.cb
        cparams.cb_eval_user_data = ctypes.c_void_p(0)
        cparams.no_perf = True
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            raise InputError(model_p, f"llama.cpp could not create a context: {libs.last_error()}")
        ctx_size = int(lc.llama_n_ctx(ctx))
        chunk = int(lc.llama_n_ubatch(ctx))
        vocab = lc.llama_model_get_vocab(model)
        n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        token_lists = [
            _tokenize(lc, vocab, pr) if isinstance(pr, str) else _check_tokens(pr, n_vocab, i)
            for i, pr in enumerate(prompts)
        ]
        for i, toks in enumerate(token_lists):
            if len(toks) >= ctx_size:
                raise InputError(
                    None,
                    f"prompt {i + 1} has {len(toks)} tokens, more than the {ctx_size}-token context "
                    f"(--ctx {n_ctx}); raise --ctx or shorten the prompt",
                )
        smpl = _make_sampler(lc, seed, temp)
        batch = lc.llama_batch_init(max(chunk, 1), 0, 1)
        mem = lc.llama_get_memory(ctx)
        collector = _Collector(header, record_weights)
        total = sum(len(t) for t in token_lists) + n_predict * len(prompts)
        bar = _progress_bar(total, progress)
        generated: list[list[int]] = []
        try:
            for req, toks in enumerate(token_lists):
                lc.llama_memory_clear(mem, True)
                lc.llama_sampler_reset(smpl)
                pos = 0
                # ---- prefill
                for a in range(0, len(toks), chunk):
                    part = toks[a : a + chunk]
                    last_chunk = a + chunk >= len(toks)
                    outputs = [output_all or (last_chunk and j == len(part) - 1) for j in range(len(part))]
                    dt = _decode(lc, ctx, batch, rec, part, pos, outputs, libs)
                    collector.add(rec, PHASE_PREFILL, req, pos, part, outputs, dt)
                    pos += len(part)
                    bar.update(len(part))
                # ---- decode
                gen: list[int] = []
                for _ in range(n_predict):
                    if pos >= ctx_size:
                        break
                    tok = int(lc.llama_sampler_sample(smpl, ctx, -1))
                    if lc.llama_vocab_is_eog(vocab, tok):
                        break
                    gen.append(tok)
                    dt = _decode(lc, ctx, batch, rec, [tok], pos, [True], libs)
                    collector.add(rec, PHASE_DECODE, req, pos, [tok], [True], dt)
                    pos += 1
                    bar.update(1)
                generated.append(gen)
        finally:
            bar.close()
    finally:
        if batch is not None:
            lc.llama_batch_free(batch)
        if smpl is not None:
            lc.llama_sampler_free(smpl)
        if ctx is not None and ctx:
            lc.llama_free(ctx)
        lc.llama_model_free(model)

    meta: dict[str, Any] = {
        "source": {
            "kind": "capture",
            "model": str(model_p),
            "llama_cpp_python": libs.version,
            "prompts": len(prompts),
            "n_predict": int(n_predict),
            "seed": seed,
            "temp": None if seed is None else float(temp),
            "n_ctx": ctx_size,
            "n_ubatch": chunk,
            "n_gpu_layers": int(n_gpu_layers),
            "output_all": bool(output_all),
            "generated_tokens": [len(g) for g in generated],
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "model": _model_meta(model_p, header),
        "weights": "router probabilities of the selected experts (ffn_moe_weights), before renormalisation",
    }
    trace, tokens = collector.build(meta)
    if trace.weights is None:
        meta.pop("weights", None)
    return CaptureResult(trace=trace, tokens=tokens, generated=generated)


def _tokenize(lc: Any, vocab: Any, text: str) -> list[int]:
    data = text.encode("utf-8")
    n_max = len(data) + 16
    buf = (lc.llama_token * n_max)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, n_max, True, False)
    if n < 0:
        n_max = -n
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(vocab, data, len(data), buf, n_max, True, False)
    if n <= 0:
        raise InputError(None, f"the prompt {text[:40]!r} gives no tokens")
    return [int(buf[i]) for i in range(n)]


def _check_tokens(toks: Sequence[int], n_vocab: int, i: int) -> list[int]:
    out = [int(t) for t in toks]
    bad = [t for t in out if not 0 <= t < n_vocab]
    if bad:
        raise InputError(
            None, f"prompt {i + 1}: token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})"
        )
    return out


def _make_sampler(lc: Any, seed: int | None, temp: float) -> Any:
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    if seed is None or temp <= 0:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
    else:
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(float(temp)))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(int(seed) & 0xFFFFFFFF))
    return chain


def _decode(
    lc: Any,
    ctx: Any,
    batch: Any,
    rec: _Recorder | None,
    toks: Sequence[int],
    pos0: int,
    outputs: Sequence[bool],
    libs: _Libs,
) -> float:
    n = len(toks)
    batch.n_tokens = n
    for j, t in enumerate(toks):
        batch.token[j] = t
        batch.pos[j] = pos0 + j
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = 0
        batch.logits[j] = 1 if outputs[j] else 0
    if rec is not None:
        rec.reset()
    t0 = time.perf_counter()
    rc = lc.llama_decode(ctx, batch)
    dt = time.perf_counter() - t0
    if rec is not None and rec.error is not None:
        err, rec.error = rec.error, None
        raise RuntimeError(f"routing capture failed inside the eval callback: {err!r}") from err
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc} at position {pos0}: {libs.last_error()}")
    return dt


class _Collector:
    """Appends each ubatch's routing to growing per-token lists and builds the :class:`Trace`."""

    def __init__(self, header: _ModelHeader, record_weights: bool) -> None:
        self.h = header
        self.layers = header.moe_layers
        self.k = header.n_expert_used
        self.ids: list[np.ndarray] = []
        self.w: list[np.ndarray] = []
        self.present: list[np.ndarray] = []
        self.phase: list[int] = []
        self.request: list[int] = []
        self.ubatch: list[int] = []
        self.pos: list[int] = []
        self.tokens: list[int] = []
        self.secs: list[float] = []
        self.n_ub = 0
        self.weights_ok = record_weights

    def add(
        self,
        rec: _Recorder,
        phase: int,
        req: int,
        pos0: int,
        toks: Sequence[int],
        outputs: Sequence[bool],
        secs: float,
    ) -> None:
        n = len(toks)
        out_rows = np.flatnonzero(np.asarray(outputs, bool))
        ids = np.zeros((n, len(self.layers), self.k), np.int32)
        w = np.zeros((n, len(self.layers), self.k), np.float32)
        present = np.zeros((n, len(self.layers)), bool)
        unknown = set(rec.ids) - set(self.layers)
        if unknown:  # pragma: no cover - filtered in the callback
            raise RuntimeError(f"routing for unexpected layers {sorted(unknown)}")
        first = self.layers[0]
        if first not in rec.ids or rec.ids[first].shape[0] != n:
            got = None if first not in rec.ids else rec.ids[first].shape
            raise RuntimeError(
                f"layer {first}: expected routing for {n} tokens, got {got} "
                "(does this llama.cpp build name the tensors ffn_moe_topk-<il>?)"
            )
        for j, il in enumerate(self.layers):
            a = rec.ids.get(il)
            rows = None
            if a is not None and a.shape[0] == n:
                rows = np.arange(n)
            elif a is not None and a.shape[0] == out_rows.size:
                rows = out_rows  # llama.cpp kept only the output rows (last layer)
            elif a is None or a.shape[0] == 0:
                rows = np.zeros(0, np.int64)
            else:
                raise RuntimeError(f"layer {il}: routing for {a.shape[0]} rows in a ubatch of {n} tokens")
            if rows.size:
                if a is None or a.shape[1] != self.k:
                    raise RuntimeError(
                        f"layer {il}: {None if a is None else a.shape[1]} experts per token, expected {self.k}"
                    )
                if int(a.min()) < 0 or int(a.max()) >= self.h.n_expert:
                    raise RuntimeError(f"layer {il}: expert id out of range [0, {self.h.n_expert})")
                ids[rows, j] = a
                present[rows, j] = True
                wa = rec.weights.get(il)
                if wa is not None and wa.shape == a.shape:
                    w[rows, j] = wa
                else:
                    self.weights_ok = False
        self.ids.append(ids)
        self.w.append(w)
        self.present.append(present)
        self.phase += [phase] * n
        self.request += [req] * n
        self.ubatch += [self.n_ub] * n
        self.pos += list(range(pos0, pos0 + n))
        self.tokens += list(toks)
        self.secs += [secs] * n
        self.n_ub += 1

    def build(self, meta: dict[str, Any]) -> tuple[Trace, np.ndarray]:
        if self.ids:
            ids = np.concatenate(self.ids)
            w = np.concatenate(self.w)
            present = np.concatenate(self.present)
        else:
            ids = np.zeros((0, len(self.layers), self.k), np.int32)
            w = np.zeros_like(ids, dtype=np.float32)
            present = np.zeros((0, len(self.layers)), bool)
        tr = Trace.from_arrays(
            ids,
            n_expert=self.h.n_expert,
            phase=np.asarray(self.phase, np.uint8),
            request=np.asarray(self.request, np.int32),
            ubatch=np.asarray(self.ubatch, np.int32),
            pos=np.asarray(self.pos, np.int32),
            moe_layers=self.layers,
            weights=w if self.weights_ok else None,
            present=None if bool(present.all()) else present,
            step_seconds=np.asarray(self.secs, np.float32),
            meta=meta,
        )
        return tr, np.asarray(self.tokens, np.int32)


def _model_meta(path: Path, header: _ModelHeader) -> dict[str, Any]:
    """The model spec dict (hotexperts.modelspec when available), else the header facts."""
    try:
        from hotexperts.modelspec import spec_from_gguf
    except ImportError:  # pragma: no cover - the package ships it
        spec_from_gguf = None  # type: ignore[assignment]
    if spec_from_gguf is not None:
        try:
            spec = spec_from_gguf(path)
            to_dict = getattr(spec, "to_dict", None)
            if callable(to_dict):
                return dict(to_dict())
            from dataclasses import asdict, is_dataclass

            if is_dataclass(spec) and not isinstance(spec, type):
                return json.loads(json.dumps(asdict(spec), default=list))
            if isinstance(spec, dict):
                return spec
        except Exception:  # noqa: BLE001 - the spec is extra metadata; the header facts suffice
            pass
    return {
        "arch": header.arch,
        "n_layer": header.n_layer,
        "moe_layers": list(header.moe_layers),
        "n_expert": header.n_expert,
        "n_expert_used": header.n_expert_used,
    }


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="tok",
        desc="capture",
        disable=not enabled or not sys.stderr.isatty(),
        leave=False,
    )


# --------------------------------------------------------------------------- CLI


def capture_from_args(args: Any) -> int:
    """``hotexperts trace capture``: parse-free entry point used by ``tracer/cli.py``."""
    if getattr(args, "prompt_file", None):
        prompts = read_prompt_file(args.prompt_file)
    else:
        if not args.prompt:
            raise InputError(None, "--prompt is empty")
        prompts = [args.prompt]
    # NOTE: check the output folder before the (possibly long) run, not after it.
    out = Path(args.out)
    if out.is_dir():
        raise InputError(out, "is a directory; --out needs a file name")
    res = run_capture(
        args.model,
        prompts,
        n_predict=args.n_predict,
        n_ctx=args.ctx,
        n_batch=args.batch,
        n_ubatch=args.ubatch,
        n_threads=args.threads,
        n_gpu_layers=args.gpu_layers,
        seed=args.seed,
        temp=args.temp,
        progress=not args.no_progress,
    )
    res.trace.save(out)
    tr = res.trace
    print(
        f"wrote {out}: {tr.n_tokens} tokens ({tr.n_prefill_tokens} prefill, {tr.n_decode_tokens} decode), "
        f"{tr.n_requests} request(s), {tr.n_layers} MoE layers, top-{tr.top_k} of {tr.n_expert}",
        file=sys.stderr,
    )
    return 0
