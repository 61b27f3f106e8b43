"""Write small random-weight MoE models as GGUF files that llama.cpp loads and runs.

Used by the capture tests (a tiny ``qwen3moe`` whose router can be recomputed in numpy) and meant
for ``hotexperts model make`` (a model of a real model's shapes with fewer layers). The tensor names,
shapes and hyper-parameter keys are those of llama.cpp's ``qwen3moe`` loader
(``src/models/qwen3moe.cpp``: ``load_arch_tensors``; ``gguf-py`` ``MODEL_TENSORS[QWEN3MOE]``).

The vocabulary is byte level: tokenizer model ``llama`` (SentencePiece) with ``<unk>``, ``<s>``,
``</s>`` and the 256 byte tokens ``<0x00>``..``<0xFF>`` (token type 6, byte) and zero scores, so
llama.cpp tokenizes any text into its UTF-8 bytes (formats.md section 6).

Tensors are generated, quantized and written one at a time (``add_tensor_info`` first, then
``write_tensor_data``), so memory stays at one tensor even for models with large expert tensors.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path

__all__ = [
    "BYTE_VOCAB_SIZE",
    "MAKE_TYPES",
    "SUPPORTED_TYPES",
    "byte_vocab",
    "make_like_gguf",
    "write_test_moe_gguf",
]

#: ``<unk>``, ``<s>``, ``</s>`` and 256 byte tokens.
BYTE_VOCAB_SIZE = 3 + 256

#: tensor types this writer can produce (the ones gguf-py can quantize to).
SUPPORTED_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")

_FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}


def byte_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the byte-level vocabulary (ids 0, 1, 2 = unk, bos, eos)."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * len(tokens)
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    return tokens, scores, types


@dataclass(frozen=True)
class _TensorPlan:
    name: str
    shape: tuple[int, ...]  # numpy order (the reverse of ggml's ne)
    ggml_type: str
    make: Callable[[np.random.Generator, str], np.ndarray]  # (rng, type) -> data to write


def _qtype(name: str) -> Any:
    import gguf

    key = name.lower()
    if key not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported tensor type {name!r}; choose one of {', '.join(SUPPORTED_TYPES)}")
    return gguf.GGMLQuantizationType[key.upper()]


def _encode(a: np.ndarray, ggml_type: str) -> np.ndarray:
    """The array to write for ``a`` stored as ``ggml_type`` (float array or quantized bytes)."""
    import gguf.quants

    a = np.ascontiguousarray(a, dtype=np.float32)
    if ggml_type == "f32":
        return a
    if ggml_type == "f16":
        return a.astype(np.float16)
    return gguf.quants.quantize(a, _qtype(ggml_type))


def _random_q8_0(rng: np.random.Generator, shape: tuple[int, ...], half: float) -> np.ndarray:
    """Q8_0 blocks (f16 scale ``d``, 32 int8 quants) of values uniform in about ``[-half, half]``."""
    n_blocks = int(np.prod(shape)) // 32
    blocks = np.empty((n_blocks, 34), np.uint8)
    blocks[:, :2] = np.full((n_blocks, 1), np.float16(half / 127.0)).view(np.uint8)
    blocks[:, 2:] = rng.integers(-127, 128, (n_blocks, 32), dtype=np.int8).view(np.uint8)
    return blocks.reshape(*shape[:-1], shape[-1] // 32 * 34)


def _tiled(pool: np.ndarray, n: int) -> np.ndarray:
    """``n`` elements repeating ``pool`` (a 1-D array)."""
    out = np.empty(n, pool.dtype)
    for a in range(0, n, pool.size):
        m = min(pool.size, n - a)
        out[a : a + m] = pool[:m]
    return out


def _pooled(rng: np.random.Generator, shape: tuple[int, ...], half: float, t: str, pool_bytes: int) -> np.ndarray:
    """Random ``t`` (q8_0 or f16) data of ``shape`` that repeats a random pool of about ``pool_bytes``.

    NOTE: drawing gigabytes of random numbers is the slow part of writing a model of a real model's
    expert shapes (about 0.3 GB/s here); for timing, weights only need to be bounded and varied,
    so a large tensor repeats a random pool whose period (an odd number of blocks) does not divide
    an expert's size, so neighbouring experts do not hold identical bytes.
    """
    n = int(np.prod(shape))
    if t == "q8_0":
        n_blocks = n // 32
        p_blocks = min(n_blocks, max(1, pool_bytes // 34) | 1)
        pool = _random_q8_0(rng, (p_blocks * 32,), half).reshape(-1)
        return _tiled(pool, n_blocks * 34).reshape(*shape[:-1], shape[-1] // 32 * 34)
    if t == "f16":
        p_n = min(n, max(1, pool_bytes // 2) | 1)
        q = rng.integers(-127, 128, p_n, dtype=np.int8)
        pool = (q.astype(np.float32) * np.float32(half / 127.0)).astype(np.float16)
        return _tiled(pool, n).reshape(shape)
    raise ValueError(f"no pooled generator for type {t!r}")


def _decode(data: np.ndarray, ggml_type: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values llama.cpp sees for ``data`` written as ``ggml_type``."""
    import gguf.quants

    if ggml_type in ("f32", "f16"):
        return np.asarray(data, dtype=np.float32)
    return np.asarray(gguf.quants.dequantize(data, _qtype(ggml_type)), dtype=np.float32).reshape(shape)


def write_test_moe_gguf(
    path: str | os.PathLike[str],
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_ff_exp: int = 32,
    n_expert: int = 16,
    n_expert_used: int = 4,
    n_head: int = 4,
    n_head_kv: int = 2,
    head_dim: int | None = None,
    n_ctx_train: int = 4096,
    seed: int = 0,
    zero_attn_out_layers: Iterable[int] = (0,),
    dtype: str = "f32",
    expert_dtype: str | None = None,
    rms_eps: float = 1e-6,
    rope_freq_base: float = 1_000_000.0,
    gate_scale: float = 1.0,
    name: str = "hotexperts-test-moe",
    keep_weights: bool = True,
    expert_pool_bytes: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a random-weight ``qwen3moe`` GGUF model to ``path`` (atomically).

    Args:
        n_layer .. n_head_kv: model shapes (every layer is a MoE layer, as in qwen3moe).
        head_dim: per-head size (default ``n_embd // n_head``).
        seed: weights are a deterministic function of the seed and the shapes.
        zero_attn_out_layers: layers whose ``attn_output`` is all zeros, so that their MoE input is
            just the residual stream (for layer 0: the token embedding).
        dtype: type of the dense 2-D weights (token_embd, output, attention); norms and the router
            (``ffn_gate_inp``) stay f32 as in llama.cpp's quantizer.
        expert_dtype: type of the expert tensors (default ``dtype``).
        gate_scale: standard deviation of the router weights times ``sqrt(n_embd)``; larger values
            spread the router logits and make near-ties in the top-k rarer.
        keep_weights: return the router-related weights (else only the scalar facts).
        expert_pool_bytes: when set (expert type q8_0 or f16), each expert tensor repeats a random
            pool of about this many bytes instead of being drawn in full (much faster for large
            models; see :func:`_pooled`).
        progress: show a tqdm bar over the bytes written (only on a TTY).

    Returns:
        A dict with ``token_embd`` ``(n_vocab, n_embd)``, ``ffn_norm`` (list per layer,
        ``(n_embd,)``), ``ffn_gate_inp`` (list per layer, ``(n_expert, n_embd)``), all float32 as
        llama.cpp sees them (after the round trip through ``dtype``); ``rms_eps``, ``n_vocab``,
        ``n_layer``, ``n_expert``, ``n_expert_used``, ``arch`` and ``bytes`` (file size).
    """
    import gguf

    if n_layer < 1 or n_expert < 2 or not 1 <= n_expert_used <= n_expert:
        raise ValueError(f"bad shape: n_layer={n_layer}, n_expert={n_expert}, n_expert_used={n_expert_used}")
    if n_head < 1 or n_head_kv < 1 or n_head % n_head_kv:
        raise ValueError(f"n_head={n_head} must be a positive multiple of n_head_kv={n_head_kv}")
    hd = head_dim if head_dim is not None else n_embd // n_head
    if hd < 2 or hd % 2:
        raise ValueError(f"head_dim must be even and >= 2, got {hd}")
    dtype = dtype.lower()
    etype = (expert_dtype or dtype).lower()
    _qtype(dtype)
    _qtype(etype)
    zero_layers = {int(x) for x in zero_attn_out_layers}
    n_vocab = BYTE_VOCAB_SIZE

    def normal(shape: tuple[int, ...], std: float) -> Callable[[np.random.Generator, str], np.ndarray]:
        # NOTE: uniform with the given standard deviation, not Gaussian: twice as fast to draw, and
        # q8_0 tensors are drawn directly as blocks (int8 quants and one scale), with no quantizing.
        half = float(std) * 3.0**0.5

        def make(rng: np.random.Generator, t: str) -> np.ndarray:
            if t == "q8_0":
                return _random_q8_0(rng, shape, half)
            a = rng.random(shape, dtype=np.float32)
            a *= np.float32(2 * half)
            a -= np.float32(half)
            return _encode(a, t)

        return make

    def expert_w(shape: tuple[int, ...], std: float) -> Callable[[np.random.Generator, str], np.ndarray]:
        if expert_pool_bytes is None or etype not in ("q8_0", "f16"):
            return normal(shape, std)
        half = float(std) * 3.0**0.5
        return lambda rng, t: _pooled(rng, shape, half, t, int(expert_pool_bytes))

    def norm_w(n: int) -> Callable[[np.random.Generator, str], np.ndarray]:
        return lambda rng, t: _encode(1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32), t)

    def zeros(shape: tuple[int, ...]) -> Callable[[np.random.Generator, str], np.ndarray]:
        return lambda rng, t: _encode(np.zeros(shape, np.float32), t)

    plans: list[_TensorPlan] = [
        _TensorPlan("token_embd.weight", (n_vocab, n_embd), dtype, normal((n_vocab, n_embd), 1.0)),
        _TensorPlan("output_norm.weight", (n_embd,), "f32", norm_w(n_embd)),
        _TensorPlan("output.weight", (n_vocab, n_embd), dtype, normal((n_vocab, n_embd), n_embd**-0.5)),
    ]
    for il in range(n_layer):
        p = f"blk.{il}."
        wo_shape = (n_embd, n_head * hd)
        plans += [
            _TensorPlan(p + "attn_norm.weight", (n_embd,), "f32", norm_w(n_embd)),
            _TensorPlan(
                p + "attn_q.weight", (n_head * hd, n_embd), dtype, normal((n_head * hd, n_embd), n_embd**-0.5)
            ),
            _TensorPlan(
                p + "attn_k.weight",
                (n_head_kv * hd, n_embd),
                dtype,
                normal((n_head_kv * hd, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "attn_v.weight",
                (n_head_kv * hd, n_embd),
                dtype,
                normal((n_head_kv * hd, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "attn_output.weight",
                wo_shape,
                dtype,
                zeros(wo_shape) if il in zero_layers else normal(wo_shape, (n_head * hd) ** -0.5),
            ),
            _TensorPlan(p + "attn_q_norm.weight", (hd,), "f32", norm_w(hd)),
            _TensorPlan(p + "attn_k_norm.weight", (hd,), "f32", norm_w(hd)),
            _TensorPlan(p + "ffn_norm.weight", (n_embd,), "f32", norm_w(n_embd)),
            _TensorPlan(
                p + "ffn_gate_inp.weight", (n_expert, n_embd), "f32", normal((n_expert, n_embd), gate_scale)
            ),
            _TensorPlan(
                p + "ffn_gate_exps.weight",
                (n_expert, n_ff_exp, n_embd),
                etype,
                expert_w((n_expert, n_ff_exp, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "ffn_up_exps.weight",
                (n_expert, n_ff_exp, n_embd),
                etype,
                expert_w((n_expert, n_ff_exp, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "ffn_down_exps.weight",
                (n_expert, n_embd, n_ff_exp),
                etype,
                expert_w((n_expert, n_embd, n_ff_exp), n_ff_exp**-0.5),
            ),
        ]

    quant_sizes = gguf.GGML_QUANT_SIZES
    for plan in plans:
        qt = _qtype(plan.ggml_type)
        block, _ = quant_sizes[qt]
        if plan.shape[-1] % block:
            raise ValueError(
                f"{plan.name}: row length {plan.shape[-1]} is not a multiple of the {plan.ggml_type} block size {block}"
            )

    out: dict[str, Any] = {
        "arch": "qwen3moe",
        "rms_eps": float(rms_eps),
        "n_vocab": n_vocab,
        "n_layer": n_layer,
        "n_expert": n_expert,
        "n_expert_used": n_expert_used,
        "ffn_norm": [None] * n_layer,
        "ffn_gate_inp": [None] * n_layer,
    }
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, "qwen3moe")
        w.add_name(name)
        w.add_context_length(n_ctx_train)
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(n_ff_exp * n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_freq_base(rope_freq_base)
        w.add_layer_norm_rms_eps(rms_eps)
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_file_type(_FILE_TYPES[etype if etype == dtype else dtype])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        tokens, scores, types = byte_vocab()
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        # NOTE: no leading-space prefix: the prompt's bytes are exactly its tokens (after <s>).
        w.add_add_space_prefix(False)
        for plan in plans:
            qt = _qtype(plan.ggml_type)
            n_el = int(np.prod(plan.shape))
            if plan.ggml_type in ("f32", "f16"):
                np_dtype = np.dtype(np.float32 if plan.ggml_type == "f32" else np.float16)
                w.add_tensor_info(plan.name, plan.shape, np_dtype, n_el * np_dtype.itemsize)
            else:
                block, type_size = quant_sizes[qt]
                byte_shape = (*plan.shape[:-1], plan.shape[-1] // block * type_size)
                w.add_tensor_info(
                    plan.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qt
                )
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        bar = _progress_bar(sum(_plan_nbytes(p) for p in plans), progress)
        for plan in plans:
            data = plan.make(rng, plan.ggml_type)
            w.write_tensor_data(data)
            bar.update(data.nbytes)
            if keep_weights:
                if plan.name == "token_embd.weight":
                    out["token_embd"] = _decode(data, plan.ggml_type, plan.shape)
                elif plan.name.endswith(".ffn_norm.weight"):
                    out["ffn_norm"][int(plan.name.split(".")[1])] = _decode(data, plan.ggml_type, plan.shape)
                elif plan.name.endswith(".ffn_gate_inp.weight"):
                    out["ffn_gate_inp"][int(plan.name.split(".")[1])] = _decode(data, plan.ggml_type, plan.shape)
        bar.close()
        w.close()
        out["bytes"] = os.path.getsize(tmp)
    return out


def _plan_nbytes(plan: _TensorPlan) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[_qtype(plan.ggml_type)]
    return int(np.prod(plan.shape)) // block * type_size


def _progress_bar(total: int, enabled: bool) -> Any:
    import sys

    from tqdm import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, desc="write", leave=False,
        disable=not enabled or not sys.stderr.isatty(),
    )


#: tensor types of ``hotexperts model make`` (fast to generate, run on every llama.cpp backend).
MAKE_TYPES = ("q8_0", "f16")

#: default size of the random pool that large expert tensors repeat (see :func:`_pooled`).
_MAKE_POOL_BYTES = 16 * 2**20 + 34 * 7


def make_like_gguf(
    path: str | os.PathLike[str],
    *,
    like: str,
    n_layer: int,
    ggml_type: str = "q8_0",
    seed: int = 0,
    n_expert: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a random-weight ``qwen3moe`` GGUF with the expert shapes of model ``like``, ``n_layer`` layers.

    ``like`` is a preset name, a spec ``.json`` or a GGUF (:func:`hotexperts.modelspec.load_model_spec`).
    The model copies its hidden size, expert feed-forward size, expert count and top-k, and its
    attention head counts (so that attention costs about what one full-attention layer of it costs);
    every layer is a MoE layer with routed experts only. What it does NOT copy: shared experts,
    linear-attention layers (qwen3moe has none), the vocabulary (byte level, 259 tokens: the output
    layer is almost free) and the quantization mix (every 2-D weight is ``ggml_type``).

    Args:
        n_expert: override the routed expert count (top-k is kept, so it must be >= top-k).

    Returns:
        The facts of :func:`write_test_moe_gguf` (without weights) plus ``like``, ``hidden_size``,
        ``expert_ff``, ``expert_bytes`` (one expert) and ``type``.

    Raises:
        InputError: unknown model, bad layer/expert count, unsupported type, or shapes that are not
        a multiple of the type's block size.
    """
    from hotexperts.errors import InputError
    from hotexperts.modelspec import load_model_spec

    t = ggml_type.lower()
    if t not in MAKE_TYPES:
        raise InputError(None, f"--type {ggml_type!r} is not supported; choose one of {', '.join(MAKE_TYPES)}")
    spec = load_model_spec(like)
    if n_layer < 1:
        raise InputError(None, f"--layers must be >= 1, got {n_layer}")
    if n_layer > spec.n_moe_layers:
        raise InputError(
            None, f"--layers {n_layer} is more than the {spec.n_moe_layers} MoE layers of {spec.name}"
        )
    n_exp = spec.n_expert if n_expert is None else int(n_expert)
    if not spec.n_expert_used <= n_exp <= 65_536 or n_exp < 2:
        raise InputError(
            None, f"--experts must be between max(2, top-k={spec.n_expert_used}) and 65536, got {n_exp}"
        )
    hidden, ff = int(spec.hidden_size), int(spec.expert_ff)
    for what, v in (("hidden size", hidden), ("expert feed-forward size", ff)):
        if v <= 0 or v % 32:
            raise InputError(None, f"{spec.name}: {what} {v} is not a positive multiple of 32 (the {t} block)")
    # NOTE: a spec without attention facts (a hand-written JSON) gets 128-wide heads, GQA 4:1.
    head_dim = int(spec.head_dim) or 128
    n_head = int(spec.n_head) or max(1, hidden // head_dim)
    n_head_kv = int(spec.n_head_kv) or max(1, n_head // 4)
    if n_head % n_head_kv:
        n_head_kv = 1
    if (n_head * head_dim) % 32 or head_dim % 2:
        raise InputError(None, f"{spec.name}: attention size {n_head} x {head_dim} is not a multiple of 32")
    info = write_test_moe_gguf(
        path,
        n_layer=int(n_layer),
        n_embd=hidden,
        n_ff_exp=ff,
        n_expert=n_exp,
        n_expert_used=int(spec.n_expert_used),
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        seed=int(seed),
        zero_attn_out_layers=(),
        dtype=t,
        expert_dtype=t,
        name=f"hotexperts-make-like-{spec.name}",
        keep_weights=False,
        expert_pool_bytes=_MAKE_POOL_BYTES,
        progress=progress,
    )
    for k in ("ffn_norm", "ffn_gate_inp"):
        info.pop(k, None)
    per_weight = 34 / 32 if t == "q8_0" else 2
    info.update(
        like=spec.name,
        type=t,
        hidden_size=hidden,
        expert_ff=ff,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        expert_bytes=int(3 * hidden * ff * per_weight),
    )
    return info
