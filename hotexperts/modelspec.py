"""Model specs: the shapes and exact byte sizes of a MoE model that tracing, simulation and tuning need.

A :class:`ModelSpec` comes from a GGUF header (:func:`spec_from_gguf`, header only, no tensor
data) or from a built-in preset (:data:`PRESETS`), and :func:`load_model_spec` accepts either a
preset name or a path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "ModelSpec",
    "KV_TYPE_BYTES",
]

# bytes per element of a KV cache type (ggml block size / block elements)
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

    @property
    def n_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def total_expert_bytes(self) -> int:
        """Bytes of all routed experts of all MoE layers."""
        return int(sum(self.expert_bytes) * self.n_expert)

    def kv_bytes_per_token(self, kv_type: str = "f16") -> float:
        """KV-cache bytes per token of context (K and V, all layers with a KV cache)."""
        try:
            per = KV_TYPE_BYTES[kv_type]
        except KeyError:
            raise ValueError(f"unknown KV cache type {kv_type!r}; known: {', '.join(KV_TYPE_BYTES)}") from None
        return 2.0 * self.n_kv_layers * self.n_head_kv * self.head_dim * per

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
        return cls(**kw)
