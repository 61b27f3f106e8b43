"""Built-in model specs for models without a GGUF file at hand.

Three presets are DERIVED: a synthetic GGUF header (metadata + tensor infos with shapes and ggml
types, no data) is generated from the architecture's tensor list in llama.cpp
(``src/llama-model.cpp``, ``gguf-py`` ``MODEL_TENSORS``), the model's published HF config, and
llama.cpp's quantization recipe (``src/llama-quant.cpp``, ``llama_tensor_get_type_impl``), and
then goes through the same :func:`hotexperts.modelspec.spec_from_header` as a real file. The
Kimi-Linear preset is TAKEN from a published header dump of the real GGUF. docs/models.md
gives the derivations and checks; ``extra["estimates"]`` names the fields that are estimates.

Recipe rules used (llama.cpp Q4_K_M, default type Q4_K):
- ``use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2`` (integer division);
- ``ffn_down*`` (routed and shared experts alike; the layer index parsed from the name for MoE
  models, n = number of layers): Q6_K where use_more_bits, else Q4_K;
- ``attn_v`` and (Qwen3.5) the fused ``attn_qkv``: both count as "attention-V-like", indexed by
  their order in the file (= layer order here): Q6_K where use_more_bits, else Q4_K; for models
  with exactly 8 experts ``attn_v`` and ``attn_k`` are Q8_0 and ``attn_output`` Q5_K;
- output head Q6_K; routers (``ffn_gate_inp``), norms, 1-D tensors and ``ssm_conv1d`` are not
  quantized (F32 from the converter); bartowski's "_L" variants use Q8_0 for embedding and output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hotexperts.errors import InputError
from hotexperts.modelspec import GGUFHeader, ModelSpec, TensorInfo, spec_from_header, tensor_nbytes

__all__ = [
    "PRESETS",
    "get_preset",
    "preset_names",
    "use_more_bits",
    "qwen35moe_header",
    "llama4_header",
    "deepseek2_header",
]


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's Q4_K_M/Q5_K_M rule for which layers get more bits (llama-quant.cpp)."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


class _Builder:
    def __init__(self) -> None:
        self.tensors: list[TensorInfo] = []

    def add(self, name: str, shape: tuple[int, ...], ggml_type: str) -> None:
        self.tensors.append(TensorInfo(name, shape, ggml_type, tensor_nbytes(shape, ggml_type)))


def qwen35moe_header(*, embd_type: str = "Q8_0", output_type: str = "Q8_0") -> GGUFHeader:
    """Synthetic header of Qwen3.5-122B-A10B quantized with the Q4_K_M recipe (Q4_K_L by default).

    Shapes: llama.cpp ``llama_model_qwen35moe::load_arch_tensors``; sizes: the HF config
    (hidden 3072, 48 layers, full attention every 4th layer (il % 4 == 3), 32 query heads,
    2 KV heads, head dim 256, Gated DeltaNet with 16 K heads, 64 V heads of dim 128, conv kernel
    4, 256 experts top-8 of ff 1024, one shared expert of ff 1024, vocab 248,320, untied).
    """
    n_layer, n_embd, n_vocab = 48, 3072, 248_320
    n_head, n_head_kv, hd = 32, 2, 256
    n_expert, n_used, n_ff = 256, 8, 1024
    d_state, n_group, n_v_heads, d_conv = 128, 16, 64, 4
    key_dim, value_dim = d_state * n_group, d_state * n_v_heads
    conv_dim = 2 * key_dim + value_dim
    arch = "qwen35moe"
    b = _Builder()
    b.add("token_embd.weight", (n_embd, n_vocab), embd_type)
    b.add("output_norm.weight", (n_embd,), "F32")
    b.add("output.weight", (n_embd, n_vocab), output_type)
    for il in range(n_layer):
        more = use_more_bits(il, n_layer)
        p = f"blk.{il}."
        b.add(p + "attn_norm.weight", (n_embd,), "F32")
        b.add(p + "post_attention_norm.weight", (n_embd,), "F32")
        if il % 4 == 3:  # gated full attention (query + gate in one projection)
            b.add(p + "attn_q.weight", (n_embd, hd * n_head * 2), "Q4_K")
            b.add(p + "attn_k.weight", (n_embd, hd * n_head_kv), "Q4_K")
            b.add(p + "attn_v.weight", (n_embd, hd * n_head_kv), "Q6_K" if more else "Q4_K")
            b.add(p + "attn_output.weight", (hd * n_head, n_embd), "Q4_K")
            b.add(p + "attn_q_norm.weight", (hd,), "F32")
            b.add(p + "attn_k_norm.weight", (hd,), "F32")
        else:  # Gated DeltaNet
            b.add(p + "attn_qkv.weight", (n_embd, conv_dim), "Q6_K" if more else "Q4_K")
            b.add(p + "attn_gate.weight", (n_embd, value_dim), "Q4_K")
            b.add(p + "ssm_conv1d.weight", (d_conv, conv_dim), "F32")
            b.add(p + "ssm_dt.bias", (n_v_heads,), "F32")
            b.add(p + "ssm_a", (n_v_heads,), "F32")
            b.add(p + "ssm_beta.weight", (n_embd, n_v_heads), "Q4_K")
            b.add(p + "ssm_alpha.weight", (n_embd, n_v_heads), "Q4_K")
            b.add(p + "ssm_norm.weight", (d_state,), "F32")
            b.add(p + "ssm_out.weight", (value_dim, n_embd), "Q4_K")
        b.add(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32")
        b.add(p + "ffn_gate_exps.weight", (n_embd, n_ff, n_expert), "Q4_K")
        b.add(p + "ffn_up_exps.weight", (n_embd, n_ff, n_expert), "Q4_K")
        b.add(p + "ffn_down_exps.weight", (n_ff, n_embd, n_expert), "Q6_K" if more else "Q4_K")
        b.add(p + "ffn_gate_inp_shexp.weight", (n_embd,), "F32")
        b.add(p + "ffn_gate_shexp.weight", (n_embd, n_ff), "Q4_K")
        b.add(p + "ffn_up_shexp.weight", (n_embd, n_ff), "Q4_K")
        b.add(p + "ffn_down_shexp.weight", (n_ff, n_embd), "Q6_K" if more else "Q4_K")
    kv: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": "Qwen3.5-122B-A10B",
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.expert_count": n_expert,
        f"{arch}.expert_used_count": n_used,
        f"{arch}.expert_feed_forward_length": n_ff,
        f"{arch}.expert_shared_feed_forward_length": n_ff,
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head_kv,
        f"{arch}.attention.key_length": hd,
        f"{arch}.attention.value_length": hd,
        f"{arch}.ssm.conv_kernel": d_conv,
        f"{arch}.ssm.state_size": d_state,
        f"{arch}.ssm.group_count": n_group,
        f"{arch}.ssm.time_step_rank": n_v_heads,
        f"{arch}.ssm.inner_size": value_dim,
        f"{arch}.full_attention_interval": 4,
    }
    return GGUFHeader(3, kv, tuple(b.tensors))


def _qwen35_122b() -> ModelSpec:
    return spec_from_header(
        qwen35moe_header(),
        name="qwen3.5-122b-a10b-q4_k_l",
        source="preset: Qwen3.5-122B-A10B, bartowski Q4_K_L (llama.cpp Q4_K_M recipe + Q8_0 embd/output), derived",
        estimates=("dense_bytes", "expert_types"),
        extra={
            "reference": "calibration.md; HF config of Qwen/Qwen3.5-122B-A10B; llama.cpp llama-quant.cpp",
            "note": "tensor types follow the current llama.cpp Q4_K_M recipe; the real file may differ "
            "in non-expert tensors (e.g. attn_qkv Q5_K in older llama.cpp)",
        },
    )


def _moe_transformer_header(
    *,
    arch: str,
    name: str,
    n_layer: int,
    n_embd: int,
    n_vocab: int,
    n_head: int,
    n_head_kv: int,
    head_dim: int,
    n_expert: int,
    n_used: int,
    n_ff: int,
    qk_norm: bool,
    embd_type: str = "Q4_K",
    output_type: str = "Q6_K",
) -> GGUFHeader:
    """Synthetic Q4_K_M header of a plain MoE transformer (llama-style Mixtral, qwen3moe)."""
    eight = n_expert == 8
    b = _Builder()
    b.add("token_embd.weight", (n_embd, n_vocab), embd_type)
    b.add("output_norm.weight", (n_embd,), "F32")
    b.add("output.weight", (n_embd, n_vocab), output_type)
    for il in range(n_layer):
        more = use_more_bits(il, n_layer)
        p = f"blk.{il}."
        b.add(p + "attn_norm.weight", (n_embd,), "F32")
        b.add(p + "attn_q.weight", (n_embd, head_dim * n_head), "Q4_K")
        b.add(p + "attn_k.weight", (n_embd, head_dim * n_head_kv), "Q8_0" if eight else "Q4_K")
        b.add(p + "attn_v.weight", (n_embd, head_dim * n_head_kv), "Q8_0" if eight else ("Q6_K" if more else "Q4_K"))
        b.add(p + "attn_output.weight", (head_dim * n_head, n_embd), "Q5_K" if eight else "Q4_K")
        if qk_norm:
            b.add(p + "attn_q_norm.weight", (head_dim,), "F32")
            b.add(p + "attn_k_norm.weight", (head_dim,), "F32")
        b.add(p + "ffn_norm.weight", (n_embd,), "F32")
        b.add(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32")
        b.add(p + "ffn_gate_exps.weight", (n_embd, n_ff, n_expert), "Q4_K")
        b.add(p + "ffn_up_exps.weight", (n_embd, n_ff, n_expert), "Q4_K")
        b.add(p + "ffn_down_exps.weight", (n_ff, n_embd, n_expert), "Q6_K" if more else "Q4_K")
    kv: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": name,
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.expert_count": n_expert,
        f"{arch}.expert_used_count": n_used,
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head_kv,
        f"{arch}.attention.key_length": head_dim,
    }
    return GGUFHeader(3, kv, tuple(b.tensors))


def _mixtral() -> ModelSpec:
    header = _moe_transformer_header(
        arch="llama", name="Mixtral-8x7B-Instruct-v0.1", n_layer=32, n_embd=4096, n_vocab=32_000,
        n_head=32, n_head_kv=8, head_dim=128, n_expert=8, n_used=2, n_ff=14_336, qk_norm=False,
    )
    return spec_from_header(
        header,
        name="mixtral-8x7b-q4_k_m",
        source="preset: Mixtral-8x7B-Instruct-v0.1, llama.cpp Q4_K_M recipe, derived",
        estimates=("dense_bytes", "expert_types"),
        extra={
            "reference": "HF config mistralai/Mixtral-8x7B-Instruct-v0.1; llama.cpp llama-quant.cpp",
            "note": "the shared Mixtral traces were recorded with vLLM FP8 weights; this preset prices the "
            "same routing with GGUF Q4_K_M weights (FP8: 3 x 4096 x 14336 = 176,160,768 B per expert)",
        },
    )


def _qwen3_30b() -> ModelSpec:
    header = _moe_transformer_header(
        arch="qwen3moe", name="Qwen3-30B-A3B", n_layer=48, n_embd=2048, n_vocab=151_936,
        n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_used=8, n_ff=768, qk_norm=True,
    )
    return spec_from_header(
        header,
        name="qwen3-30b-a3b-q4_k_m",
        source="preset: Qwen3-30B-A3B, llama.cpp Q4_K_M recipe, derived",
        estimates=("dense_bytes", "expert_types"),
        extra={"reference": "HF config Qwen/Qwen3-30B-A3B (untied embeddings); llama.cpp llama-quant.cpp"},
    )


# Kimi-Linear-48B-A3B-Instruct, bartowski Q4_K_M (llama.cpp b7966), from a published dump of the
# real file's header (github.com/pmains/kimi-linear-48b-ssd-streaming,
# benchmarks/results/phase-02-gguf-header-analysis.json): ffn_down_exps is Q6_K in these layers,
# Q4_K elsewhere; gate/up Q4_K; per-category byte totals of the non-expert tensors below.
_KIMI_Q6K_DOWN = frozenset({1, 2, 3, 6, 9, 12, 15, 18, 21, 23, 24, 25, 26})
_KIMI_DENSE_PARTS = {
    "output (head + norm)": 309_666_816,
    "token embedding (Q4_K)": 212_336_640,
    "attention (MLA) and dense layer-0 FFN": 705_896_448,
    "other (norms, ...)": 41_581_568,
    "kda (linear attention)": 26_155_520,
    "shared experts": 173_242_368,
    "routers (F32)": 61_341_696,
}


def _kimi() -> ModelSpec:
    n_embd, n_ff, n_expert = 2304, 1024, 256
    w = n_embd * n_ff
    types, sizes = [], []
    for il in range(1, 27):
        down = "Q6_K" if il in _KIMI_Q6K_DOWN else "Q4_K"
        types.append({"gate": "Q4_K", "up": "Q4_K", "down": down})
        sizes.append(2 * tensor_nbytes((n_embd, n_ff), "Q4_K") + tensor_nbytes((n_ff, n_embd), down))
    assert w * 3 == 7_077_888
    kv_layers = [3, 7, 11, 15, 19, 23, 26]  # head_count_kv = 1 there, 0 in the KDA layers
    n_head, kda_dim, d_conv = 32, 128, 4
    n_rec = 27 - len(kv_layers)
    state = 4 * n_rec * (n_head * kda_dim * kda_dim + 3 * (d_conv - 1) * n_head * kda_dim)
    return ModelSpec(
        name="kimi-linear-48b-a3b-q4_k_m",
        arch="kimi-linear",
        n_layer=27,
        moe_layers=tuple(range(1, 27)),
        n_expert=n_expert,
        n_expert_used=8,
        hidden_size=n_embd,
        expert_ff=n_ff,
        expert_bytes=tuple(sizes),
        dense_bytes=sum(_KIMI_DENSE_PARTS.values()),
        n_shared_expert=1,
        shared_ff=n_ff,
        expert_types=tuple(types),
        n_kv_layers=len(kv_layers),
        n_head_kv=1,
        # MLA cached in compressed form: kv_lora_rank 512 + rope 64 for K, 512 for V
        head_dim=576,
        head_dim_v=512,
        n_head=n_head,
        vocab_size=163_840,
        state_bytes=state,
        embd_bytes=212_336_640,
        source="preset: Kimi-Linear-48B-A3B-Instruct, bartowski Q4_K_M, from a published header dump",
        extra={
            "reference": "github.com/pmains/kimi-linear-48b-ssd-streaming "
            "benchmarks/results/phase-02-gguf-header-analysis.json",
            "dense_parts": dict(_KIMI_DENSE_PARTS),
            "kv_layers": kv_layers,
            "recurrent_layers": [i for i in range(27) if i not in kv_layers],
            "total_bytes": 30_054_109_696,
            "n_params": 49_122_681_728,
            "estimates": ["kv_bytes_per_token", "state_bytes"],
        },
    )


# ---------------------------------------------------------------------------------------------
# Presets for the shapes of the shared per-request traces (Llama-4-Maverick, DeepSeek-V2-Lite) and
# for DeepSeek-V3/R1 (the 256-expert "Patterns behind Chaos" files users may bring)
# ---------------------------------------------------------------------------------------------

# llama.cpp's fallback when a row length is not a multiple of a K-quant's 256-element block
# (llama-quant.cpp, "convert_incompatible_tensor"): e.g. DeepSeek-V2-Lite's 1408-wide expert down_proj.
_KQUANT_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def _fit(shape: tuple[int, ...], ggml_type: str) -> str:
    if ggml_type in _KQUANT_FALLBACK and shape[0] % 256:
        return _KQUANT_FALLBACK[ggml_type]
    return ggml_type


class _QBuilder(_Builder):
    """A builder that applies the K-quant fallback to every tensor, as the quantizer does."""

    def add(self, name: str, shape: tuple[int, ...], ggml_type: str) -> None:
        super().add(name, shape, _fit(shape, ggml_type))


def llama4_header() -> GGUFHeader:
    """Synthetic Q4_K_M header of Llama-4-Maverick-17B-128E-Instruct (text model).

    HF config (``text_config``): hidden 5120, 48 layers, ``interleave_moe_layer_step`` 2 (MoE in layers
    1, 3, ..., 47; the others a dense FFN of ``intermediate_size_mlp`` 16384), 128 experts top-1 of
    ``intermediate_size`` 8192 plus one shared expert of 8192, 40 query heads, 8 KV heads of 128, vocab
    202,048, untied. Tensor names: llama.cpp ``LLM_ARCH_LLAMA4``.
    """
    n_layer, n_embd, n_vocab = 48, 5120, 202_048
    n_head, n_head_kv, hd = 40, 8, 128
    n_expert, n_ff_exp, n_ff_dense = 128, 8192, 16_384
    arch = "llama4"
    b = _QBuilder()
    b.add("token_embd.weight", (n_embd, n_vocab), "Q4_K")
    b.add("output_norm.weight", (n_embd,), "F32")
    b.add("output.weight", (n_embd, n_vocab), "Q6_K")
    for il in range(n_layer):
        more = use_more_bits(il, n_layer)
        p = f"blk.{il}."
        b.add(p + "attn_norm.weight", (n_embd,), "F32")
        b.add(p + "attn_q.weight", (n_embd, n_head * hd), "Q4_K")
        b.add(p + "attn_k.weight", (n_embd, n_head_kv * hd), "Q4_K")
        b.add(p + "attn_v.weight", (n_embd, n_head_kv * hd), "Q6_K" if more else "Q4_K")
        b.add(p + "attn_output.weight", (n_head * hd, n_embd), "Q4_K")
        b.add(p + "ffn_norm.weight", (n_embd,), "F32")
        if il % 2 == 1:
            b.add(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32")
            b.add(p + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K")
            b.add(p + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K")
            b.add(p + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), "Q6_K" if more else "Q4_K")
            b.add(p + "ffn_gate_shexp.weight", (n_embd, n_ff_exp), "Q4_K")
            b.add(p + "ffn_up_shexp.weight", (n_embd, n_ff_exp), "Q4_K")
            b.add(p + "ffn_down_shexp.weight", (n_ff_exp, n_embd), "Q6_K" if more else "Q4_K")
        else:
            b.add(p + "ffn_gate.weight", (n_embd, n_ff_dense), "Q4_K")
            b.add(p + "ffn_up.weight", (n_embd, n_ff_dense), "Q4_K")
            b.add(p + "ffn_down.weight", (n_ff_dense, n_embd), "Q6_K" if more else "Q4_K")
    kv: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": "Llama-4-Maverick-17B-128E-Instruct",
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.feed_forward_length": n_ff_dense,
        f"{arch}.expert_feed_forward_length": n_ff_exp,
        f"{arch}.expert_count": n_expert,
        f"{arch}.expert_used_count": 1,
        f"{arch}.interleave_moe_layer_step": 2,
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head_kv,
        f"{arch}.attention.key_length": hd,
    }
    return GGUFHeader(3, kv, tuple(b.tensors))


def deepseek2_header(
    *,
    name: str,
    n_layer: int,
    n_embd: int,
    n_vocab: int,
    n_head: int,
    q_lora_rank: int,
    n_dense: int,
    n_ff_dense: int,
    n_expert: int,
    n_used: int,
    n_ff_exp: int,
    n_shared: int,
    expert_bias: bool,
) -> GGUFHeader:
    """Synthetic Q4_K_M header of a DeepSeek-V2/V3 model (llama.cpp ``LLM_ARCH_DEEPSEEK2``, MLA attention:
    kv_lora_rank 512, 128 + 64 (rope) query/key head dims, 128 value head dim)."""
    kv_lora, nope, rope, vdim = 512, 128, 64, 128
    arch = "deepseek2"
    b = _QBuilder()
    b.add("token_embd.weight", (n_embd, n_vocab), "Q4_K")
    b.add("output_norm.weight", (n_embd,), "F32")
    b.add("output.weight", (n_embd, n_vocab), "Q6_K")
    for il in range(n_layer):
        more = use_more_bits(il, n_layer)
        p = f"blk.{il}."
        b.add(p + "attn_norm.weight", (n_embd,), "F32")
        if q_lora_rank:
            b.add(p + "attn_q_a.weight", (n_embd, q_lora_rank), "Q4_K")
            b.add(p + "attn_q_a_norm.weight", (q_lora_rank,), "F32")
            b.add(p + "attn_q_b.weight", (q_lora_rank, n_head * (nope + rope)), "Q4_K")
        else:
            b.add(p + "attn_q.weight", (n_embd, n_head * (nope + rope)), "Q4_K")
        b.add(p + "attn_kv_a_mqa.weight", (n_embd, kv_lora + rope), "Q4_K")
        b.add(p + "attn_kv_a_norm.weight", (kv_lora,), "F32")
        b.add(p + "attn_kv_b.weight", (kv_lora, n_head * (nope + vdim)), "Q4_K")
        b.add(p + "attn_output.weight", (n_head * vdim, n_embd), "Q4_K")
        b.add(p + "ffn_norm.weight", (n_embd,), "F32")
        if il < n_dense:
            b.add(p + "ffn_gate.weight", (n_embd, n_ff_dense), "Q4_K")
            b.add(p + "ffn_up.weight", (n_embd, n_ff_dense), "Q4_K")
            b.add(p + "ffn_down.weight", (n_ff_dense, n_embd), "Q6_K" if more else "Q4_K")
            continue
        b.add(p + "ffn_gate_inp.weight", (n_embd, n_expert), "F32")
        if expert_bias:
            b.add(p + "exp_probs_b.bias", (n_expert,), "F32")
        b.add(p + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K")
        b.add(p + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), "Q4_K")
        b.add(p + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), "Q6_K" if more else "Q4_K")
        sh = n_shared * n_ff_exp
        b.add(p + "ffn_gate_shexp.weight", (n_embd, sh), "Q4_K")
        b.add(p + "ffn_up_shexp.weight", (n_embd, sh), "Q4_K")
        b.add(p + "ffn_down_shexp.weight", (sh, n_embd), "Q6_K" if more else "Q4_K")
    kv: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": name,
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.feed_forward_length": n_ff_dense,
        f"{arch}.expert_feed_forward_length": n_ff_exp,
        f"{arch}.expert_count": n_expert,
        f"{arch}.expert_used_count": n_used,
        f"{arch}.expert_shared_count": n_shared,
        f"{arch}.leading_dense_block_count": n_dense,
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head,
        f"{arch}.attention.kv_lora_rank": kv_lora,
        f"{arch}.attention.key_length": nope + rope,
        f"{arch}.attention.value_length": vdim,
        f"{arch}.rope.dimension_count": rope,
    }
    if q_lora_rank:
        kv[f"{arch}.attention.q_lora_rank"] = q_lora_rank
    return GGUFHeader(3, kv, tuple(b.tensors))


def _maverick() -> ModelSpec:
    return spec_from_header(
        llama4_header(),
        name="llama4-maverick-17b-128e-q4_k_m",
        source="preset: Llama-4-Maverick-17B-128E-Instruct (text), llama.cpp Q4_K_M recipe, derived",
        estimates=("dense_bytes", "expert_types", "kv_bytes_per_token"),
        extra={
            "reference": "HF config meta-llama/Llama-4-Maverick-17B-128E-Instruct (text_config); llama.cpp "
            "llama-quant.cpp",
            "note": "the shared Maverick traces (llama4-maverick-mmlu) were recorded with SGLang on BF16 weights "
            "(BF16 would be 3 x 5120 x 8192 x 2 = 251,658,240 B per expert); the vision tower is not counted; "
            "3 of 4 layers use chunked (8192-token) attention, the KV estimate counts every layer fully",
        },
    )


def _deepseek_v2_lite() -> ModelSpec:
    header = deepseek2_header(
        name="DeepSeek-V2-Lite-Chat", n_layer=27, n_embd=2048, n_vocab=102_400, n_head=16, q_lora_rank=0,
        n_dense=1, n_ff_dense=10_944, n_expert=64, n_used=6, n_ff_exp=1408, n_shared=2, expert_bias=False,
    )
    return spec_from_header(
        header,
        name="deepseek-v2-lite-q4_k_m",
        source="preset: DeepSeek-V2-Lite(-Chat), llama.cpp Q4_K_M recipe, derived",
        estimates=("dense_bytes", "expert_types"),
        extra={
            "reference": "HF config deepseek-ai/DeepSeek-V2-Lite-Chat; llama.cpp llama-quant.cpp",
            "note": "expert down_proj rows of 1408 are not a multiple of 256: the quantizer falls back to Q5_0 "
            "(Q8_0 where Q6_K was chosen); the shared traces (deepseek-v2-lite-puffin) were recorded with "
            "8-bit transformers weights (int8: 3 x 2048 x 1408 = 8,650,752 B per expert)",
        },
    )


def _deepseek_v3() -> ModelSpec:
    header = deepseek2_header(
        name="DeepSeek-V3", n_layer=61, n_embd=7168, n_vocab=129_280, n_head=128, q_lora_rank=1536,
        n_dense=3, n_ff_dense=18_432, n_expert=256, n_used=8, n_ff_exp=2048, n_shared=1, expert_bias=True,
    )
    return spec_from_header(
        header,
        name="deepseek-v3-q4_k_m",
        source="preset: DeepSeek-V3 / DeepSeek-R1 (same shapes), llama.cpp Q4_K_M recipe, derived",
        estimates=("dense_bytes", "expert_types"),
        extra={
            "reference": "HF config deepseek-ai/DeepSeek-V3 (= DeepSeek-R1's); llama.cpp llama-quant.cpp",
            "note": "the multi-token-prediction layer 61 is not included (llama.cpp's converter drops it); "
            "FP8 weights would be 3 x 7168 x 2048 = 44,040,192 B per expert (plus block scales)",
        },
    )


PRESETS: dict[str, Callable[[], ModelSpec]] = {
    "qwen3.5-122b-a10b-q4_k_l": _qwen35_122b,
    "kimi-linear-48b-a3b-q4_k_m": _kimi,
    "mixtral-8x7b-q4_k_m": _mixtral,
    "qwen3-30b-a3b-q4_k_m": _qwen3_30b,
    "llama4-maverick-17b-128e-q4_k_m": _maverick,
    "deepseek-v2-lite-q4_k_m": _deepseek_v2_lite,
    "deepseek-v3-q4_k_m": _deepseek_v3,
}

_CACHE: dict[str, ModelSpec] = {}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelSpec:
    """The built-in :class:`ModelSpec` called ``name``; :class:`InputError` lists the known ones."""
    if name not in PRESETS:
        raise InputError(None, f"unknown model preset {name!r} (known presets: {', '.join(PRESETS)})")
    if name not in _CACHE:
        _CACHE[name] = PRESETS[name]().validate()
    return _CACHE[name]
