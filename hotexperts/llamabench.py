"""Measure llama.cpp itself (through llama-cpp-python) with experts placed like llama.cpp's options.

``hotexperts bench llamacpp`` loads a GGUF model through llama-cpp-python's low-level API, places
its tensors like llama.cpp's command line would, and times prompt processing (prefill) and
generation (decode) over several repetitions, like ``llama-bench``'s ``pp``/``tg`` tests:

- ``all-cpu``: ``n_gpu_layers = 0``, no overrides (llama.cpp ``-ngl 0``).
- ``gpu``: ``n_gpu_layers = 999``, no overrides (``-ngl 999``; on a CPU-only build this is the CPU).
- ``n-cpu-moe=N``: ``n_gpu_layers = 999`` and the experts of layers ``0..N-1`` kept on the CPU with
  one override ``blk\\.<i>\\.ffn_(up|down|gate)_exps=CPU`` per layer, as llama.cpp's ``--n-cpu-moe N``
  does (``common/arg.cpp``).
- ``-ot PATTERNS``: ``n_gpu_layers = 999`` and the overrides ``regex=BUFT[,regex=BUFT...]`` as
  llama.cpp's ``-ot``/``--override-tensor`` reads them; ``BUFT`` is a buffer type name (``CPU``,
  ``CUDA0``, ...), matched against the buffer types of the devices this build has.

The overrides go into ``llama_model_params.tensor_buft_overrides``: llama-cpp-python types it as a
plain pointer, so we pass a NULL-terminated array of our own ``struct {const char *pattern;
ggml_backend_buffer_type_t buft;}`` (``llama_model_tensor_buft_override`` of llama.h); the CPU
buffer type comes from ``ggml_backend_cpu_buffer_type()``. llama.cpp logs (debug level) one line
``tensor <name> ... buffer type overridden to <buft>`` per overridden tensor; we count those lines
and report them, so a pattern that matched nothing is visible.

Timing: each repetition clears the KV cache, feeds ``prompt_tokens`` fixed pseudo-random tokens in
ubatches (one ``llama_decode`` per ubatch, logits only for the last token), then ``gen_tokens``
single-token steps (logits on, fixed pseudo-random tokens, no sampling, like llama-bench), each
followed by ``llama_synchronize`` so asynchronous GPU work is inside the timed interval. A short
untimed warm-up run comes first. Routing capture (``--capture``) runs one more, untimed pass with
the same tokens through the tracer's ``cb_eval`` recorder (``hotexperts.tracer.capture``): the
callback stops the scheduler at every recorded node, so it would distort the timing; the routing
of a run depends only on its tokens, so the trace is that of the timed runs.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError

__all__ = [
    "Placement",
    "bench_llamacpp",
    "parse_placement",
    "summarize",
]

_EXPS_PATTERN = r"blk\.{il}\.ffn_(up|down|gate)_exps"
_OVERRIDE_RE = re.compile(r"tensor (\S+) .*buffer type overridden to (\S+)")


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp puts the model: GPU layer count and tensor buffer-type overrides."""

    spec: str
    n_gpu_layers: int
    overrides: tuple[tuple[str, str], ...] = ()  # (regex, buffer type name)


def parse_placement(spec: str, *, n_layer: int | None = None) -> Placement:
    """Parse ``all-cpu``, ``gpu``, ``n-cpu-moe=N`` or ``-ot PATTERNS`` (see the module doc).

    Raises :class:`InputError` for an unknown form, a bad ``N`` or an invalid regular expression.
    """
    s = spec.strip()
    if s == "all-cpu":
        return Placement(s, 0)
    if s == "gpu":
        return Placement(s, 999)
    if s.startswith("n-cpu-moe="):
        val = s.split("=", 1)[1]
        try:
            n = int(val)
        except ValueError:
            raise InputError(None, f"--placement {spec!r}: N must be an integer") from None
        if n < 0 or (n_layer is not None and n > n_layer):
            top = "" if n_layer is None else f"..{n_layer}"
            raise InputError(None, f"--placement {spec!r}: N must be in 0{top}")
        return Placement(s, 999, tuple((_EXPS_PATTERN.format(il=il), "CPU") for il in range(n)))
    if s.startswith(("-ot", "--override-tensor")):
        body = s.split(None, 1)[1] if len(s.split(None, 1)) == 2 else ""
        from hotexperts._overrides import split_tensor_overrides

        try:
            pairs = split_tensor_overrides(body)
        except ValueError as exc:
            raise InputError(None, f"--placement {spec!r}: {exc}") from None
        if not pairs:
            raise InputError(None, f"--placement {spec!r}: no REGEX=BUFFER_TYPE pattern given")
        return Placement(s, 999, tuple(pairs))
    raise InputError(
        None, f"unknown --placement {spec!r}; use all-cpu, gpu, n-cpu-moe=N or \"-ot REGEX=BUFT[,...]\""
    )


# --------------------------------------------------------------------------- llama.cpp glue


class _BuftOverride(ctypes.Structure):
    """``struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }``."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _buffer_types(lib_dir: Path) -> dict[str, int]:
    """Buffer type name -> handle: ``CPU`` and the default buffer type of every backend device."""
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
    out: dict[str, int] = {}
    for lib in (ctypes.CDLL(str(lib_dir / "libggml-cpu.so")), base):
        fn = getattr(lib, "ggml_backend_cpu_buffer_type", None)
        if fn is not None:
            fn.restype = ctypes.c_void_p
            fn.argtypes = []
            out["CPU"] = int(fn())
            break
    base.ggml_backend_buft_name.restype = ctypes.c_char_p
    base.ggml_backend_buft_name.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    base.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for i in range(int(ggml.ggml_backend_dev_count())):
        dev = ggml.ggml_backend_dev_get(i)
        buft = base.ggml_backend_dev_buffer_type(dev) if dev else None
        if buft:
            name = (base.ggml_backend_buft_name(buft) or b"").decode("utf-8", "replace")
            if name and name not in out:
                out[name] = int(buft)
    return out


def _device_names(lib_dir: Path) -> list[str]:
    base = ctypes.CDLL(str(lib_dir / "libggml-base.so"))
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
    base.ggml_backend_dev_description.restype = ctypes.c_char_p
    base.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    base.ggml_backend_dev_name.restype = ctypes.c_char_p
    base.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    names = []
    for i in range(int(ggml.ggml_backend_dev_count())):
        dev = ggml.ggml_backend_dev_get(i)
        n = (base.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace")
        d = (base.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace")
        names.append(f"{n}: {d}" if d else n)
    return names


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """``{median, min, max, all}`` of per-repetition rates."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "all": vals}


# --------------------------------------------------------------------------- benchmark


def bench_llamacpp(
    model_path: str | os.PathLike[str],
    *,
    placement: str,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    threads: int | None = None,
    reps: int = 3,
    n_ubatch: int = 512,
    capture_path: str | os.PathLike[str] | None = None,
    out_path: str | os.PathLike[str] | None = None,
    extra_bufts: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Time prefill and decode of ``model_path`` under ``placement``; return (and write) the result.

    Args:
        placement: ``all-cpu``, ``gpu``, ``n-cpu-moe=N`` or ``-ot REGEX=BUFT[,...]``.
        prompt_tokens, gen_tokens: tokens of the prompt and generated tokens per repetition
            (either may be 0, not both).
        threads: CPU threads (llama.cpp's default when None).
        reps: timed repetitions (after one untimed warm-up).
        n_ubatch: prompt tokens per ``llama_decode`` call.
        capture_path: also write the routing of these tokens as a ``.hxt`` trace (untimed pass).
        out_path: write the result JSON here (atomically).
        extra_bufts: let llama.cpp use its extra CPU buffer types (AMX, repacked weights);
            ``HOTEXPERTS_NO_EXTRA_BUFTS=1`` also turns them off (``0`` or empty: no effect).
        seed: seed of the pseudo-random prompt and generation tokens.

    Returns:
        The result dict (keys in docs/llamacpp.md): model, placement, prompt_tokens, gen_tokens,
        threads, reps, prefill_tok_s and decode_tok_s (``{median, min, max, all}``), device,
        llama_cpp_python, date, and details of the placement actually applied.
    """
    from hotexperts.tracer import capture as cap

    model_p = Path(model_path)
    header = cap._read_header(model_p)
    place = parse_placement(placement, n_layer=header.n_layer)
    if prompt_tokens < 0 or gen_tokens < 0 or prompt_tokens + gen_tokens == 0:
        raise InputError(None, f"need prompt/gen tokens >= 0 and not both 0, got {prompt_tokens}/{gen_tokens}")
    if reps < 1:
        raise InputError(None, f"--reps must be >= 1, got {reps}")
    if threads is not None and threads < 1:
        raise InputError(None, f"--threads must be >= 1, got {threads}")
    if n_ubatch < 1:
        raise InputError(None, f"--ubatch must be >= 1, got {n_ubatch}")
    if capture_path is not None and len(header.moe_layers) < 2:
        # NOTE: llama.cpp routes only the output rows in the last layer (see tracer/capture.py);
        # the recorder keys a ubatch on the first MoE layer, which must not be the last one.
        raise InputError(model_p, "--capture needs a model with at least 2 MoE layers")
    for p in (out_path, capture_path):
        if p is not None and Path(p).is_dir():
            raise InputError(p, "is a directory; a file name is needed")

    # NOTE: with a CUDA build, llama_cpp must have been imported before numpy, or the model load below
    # segfaults (H200, 2026-11-29; hotexperts/_llamafirst.py, docs/llamacpp.md). This module imports
    # numpy itself, so the order is the caller's: the `hotexperts` command preloads llama_cpp.
    libs = cap._Libs.get()
    lc = libs.llama
    lib_dir = Path(lc.__file__).resolve().parent / "lib"
    bufts = _buffer_types(lib_dir)
    for pat, name in place.overrides:
        if name not in bufts:
            raise InputError(
                None, f"--placement: unknown buffer type {name!r} in {pat}={name} (this build has: {', '.join(bufts)})"
            )
    # NOTE: the pattern bytes and the array must stay alive until the model is loaded.
    pattern_bytes = [pat.encode("utf-8") for pat, _ in place.overrides]
    arr = (_BuftOverride * (len(place.overrides) + 1))()
    for i, ((_, name), pb) in enumerate(zip(place.overrides, pattern_bytes)):
        arr[i].pattern = pb
        arr[i].buft = bufts[name]
    arr[len(place.overrides)].pattern = None
    arr[len(place.overrides)].buft = None

    mparams = lc.llama_model_default_params()
    mparams.n_gpu_layers = place.n_gpu_layers
    if place.overrides:
        mparams.tensor_buft_overrides = ctypes.cast(arr, ctypes.c_void_p)
    if not extra_bufts or cap.extra_bufts_off_by_env():
        mparams.use_extra_bufts = False
    libs.log_lines.clear()
    libs.log_keep = 1_000_000
    try:
        model = lc.llama_model_load_from_file(os.fsencode(model_p), mparams)
        load_log = list(libs.log_lines)
    finally:
        libs.log_keep = 20
    if not model:
        raise InputError(model_p, f"llama.cpp could not load the model: {libs.last_error()}")
    overridden: dict[str, str] = {}
    for line in load_log:
        m = _OVERRIDE_RE.search(line)
        if m:
            overridden[m.group(1)] = m.group(2)

    n_ctx = prompt_tokens + gen_tokens + 8
    ctx = batch = None
    try:
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = int(n_ctx)
        cparams.n_batch = int(n_ubatch)
        cparams.n_ubatch = int(n_ubatch)
        cparams.n_seq_max = 1
        if threads is not None:
            cparams.n_threads = int(threads)
            cparams.n_threads_batch = int(threads)
        cparams.no_perf = True
        ctx = lc.llama_init_from_model(model, cparams)
        if not ctx:
            raise InputError(model_p, f"llama.cpp could not create a context: {libs.last_error()}")
        n_threads = int(lc.llama_n_threads(ctx))
        chunk = int(lc.llama_n_ubatch(ctx))
        vocab = lc.llama_model_get_vocab(model)
        n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        rng = np.random.default_rng(seed)
        prompt = [int(t) for t in rng.integers(0, n_vocab, prompt_tokens)]
        gen = [int(t) for t in rng.integers(0, n_vocab, gen_tokens)]
        batch = lc.llama_batch_init(max(chunk, 1), 0, 1)
        mem = lc.llama_get_memory(ctx)

        def run(p_toks: list[int], g_toks: list[int], rec: Any = None) -> tuple[float, float]:
            lc.llama_memory_clear(mem, True)
            t_pre = t_gen = 0.0
            pos = 0
            for a in range(0, len(p_toks), chunk):
                part = p_toks[a : a + chunk]
                outputs = [a + j == len(p_toks) - 1 for j in range(len(part))]
                t0 = time.perf_counter()
                cap._decode(lc, ctx, batch, rec, part, pos, outputs, libs)
                lc.llama_synchronize(ctx)
                t_pre += time.perf_counter() - t0
                if rec is not None:
                    collector.add(rec, cap.PHASE_PREFILL, 0, pos, part, outputs, time.perf_counter() - t0)
                pos += len(part)
            for tok in g_toks:
                t0 = time.perf_counter()
                cap._decode(lc, ctx, batch, rec, [tok], pos, [True], libs)
                lc.llama_synchronize(ctx)
                dt = time.perf_counter() - t0
                t_gen += dt
                if rec is not None:
                    collector.add(rec, cap.PHASE_DECODE, 0, pos, [tok], [True], dt)
                pos += 1
            return t_pre, t_gen

        try:
            run(prompt[: min(len(prompt), 16)], gen[: min(len(gen), 2)])  # warm-up
            pre_rates, gen_rates = [], []
            for _ in range(reps):
                t_pre, t_gen = run(prompt, gen)
                if prompt:
                    pre_rates.append(len(prompt) / t_pre)
                if gen:
                    gen_rates.append(len(gen) / t_gen)
            trace_info = None
            if capture_path is not None:
                rec = cap._Recorder(libs, header.moe_layers, True)
                collector = cap._Collector(header, True)
                # NOTE: cb_eval is a context parameter: the capture pass gets its own context.
                lc.llama_batch_free(batch)
                batch = None
                lc.llama_free(ctx)
                cparams.cb_eval = rec.cb
                cparams.cb_eval_user_data = ctypes.c_void_p(0)
                ctx = lc.llama_init_from_model(model, cparams)
                if not ctx:
                    raise InputError(model_p, f"llama.cpp could not create a context: {libs.last_error()}")
                batch = lc.llama_batch_init(max(chunk, 1), 0, 1)
                mem = lc.llama_get_memory(ctx)
                run(prompt, gen, rec)
                meta = {
                    "source": {
                        "kind": "bench-llamacpp",
                        "model": str(model_p),
                        "llama_cpp_python": libs.version,
                        "placement": place.spec,
                        "prompt_tokens": len(prompt),
                        "gen_tokens": len(gen),
                        "seed": int(seed),
                        "n_ubatch": chunk,
                        "tokens": "pseudo-random ids (numpy default_rng(seed)), the same as the timed runs",
                        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    },
                    "model": cap._model_meta(model_p, header),
                    "weights": "router probabilities of the selected experts (ffn_moe_weights), before renormalisation",
                }
                trace, _ = collector.build(meta)
                trace.save(capture_path)
                trace_info = {"path": str(capture_path), "tokens": int(trace.n_tokens), "timed": False}
        except RuntimeError as exc:
            raise InputError(model_p, f"llama.cpp failed while running the model: {exc}") from None
    finally:
        if batch is not None:
            lc.llama_batch_free(batch)
        if ctx is not None and ctx:
            lc.llama_free(ctx)
        lc.llama_model_free(model)

    result: dict[str, Any] = {
        "model": str(model_p),
        "placement": place.spec,
        "prompt_tokens": len(prompt),
        "gen_tokens": len(gen),
        "threads": n_threads,
        "reps": int(reps),
        "prefill_tok_s": summarize(pre_rates) if pre_rates else None,
        "decode_tok_s": summarize(gen_rates) if gen_rates else None,
        "device": {
            "cpu": _cpu_name(),
            "backends": _device_names(lib_dir),
            "gpu_offload": bool(lc.llama_supports_gpu_offload()),
        },
        "llama_cpp_python": libs.version,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_gpu_layers": place.n_gpu_layers,
        "overrides": [{"pattern": p, "buft": b} for p, b in place.overrides],
        "overridden_tensors": dict(sorted(overridden.items())),
        "n_ubatch": chunk,
        "seed": int(seed),
        "model_info": {k: v for k, v in cap.gguf_moe_header(model_p).items()},
        "capture": trace_info,
    }
    if out_path is not None:
        write_text_atomic(out_path, json.dumps(result, indent=2) + "\n")
    return result
