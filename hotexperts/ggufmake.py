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
    "SUPPORTED_TYPES",
    "byte_vocab",
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
                normal((n_expert, n_ff_exp, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "ffn_up_exps.weight",
                (n_expert, n_ff_exp, n_embd),
                etype,
                normal((n_expert, n_ff_exp, n_embd), n_embd**-0.5),
            ),
            _TensorPlan(
                p + "ffn_down_exps.weight",
                (n_expert, n_embd, n_ff_exp),
                etype,
                normal((n_expert, n_embd, n_ff_exp), n_ff_exp**-0.5),
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
        for plan in plans:
            data = plan.make(rng, plan.ggml_type)
            w.write_tensor_data(data)
            if keep_weights:
                if plan.name == "token_embd.weight":
                    out["token_embd"] = _decode(data, plan.ggml_type, plan.shape)
                elif plan.name.endswith(".ffn_norm.weight"):
                    out["ffn_norm"][int(plan.name.split(".")[1])] = _decode(data, plan.ggml_type, plan.shape)
                elif plan.name.endswith(".ffn_gate_inp.weight"):
                    out["ffn_gate_inp"][int(plan.name.split(".")[1])] = _decode(data, plan.ggml_type, plan.shape)
        w.close()
        out["bytes"] = os.path.getsize(tmp)
    return out
