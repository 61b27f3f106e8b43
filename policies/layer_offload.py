"""``layer-offload``: whole layers' experts on the GPU, the rest on the CPU (llama.cpp ``--n-cpu-moe N``).

``--n-cpu-moe N`` keeps the experts of the first ``N`` model layers in host memory, so model layers
``N .. n_layer-1`` (the last ``n_layer - N``) hold all their experts in VRAM. An explicit set of model
layers can be given instead. A GPU layer has ``n_expert`` slots preloaded with every expert (slot ``i``
holds expert ``i``); a CPU layer has none. No uploads ever happen.

Parameters: ``n_cpu_moe`` (the ``--n-cpu-moe`` value) or ``gpu_layers`` (model layer indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from hotexperts.policies._engine import Policy, Prepared, static_kernel

__all__ = ["LayerOffload"]


@dataclass(frozen=True)
class LayerOffload(Policy):
    """Experts of whole layers on the GPU."""

    name: ClassVar[str] = "layer-offload"
    layer_independent: ClassVar[bool] = True
    uses_slots: ClassVar[bool] = False
    label_keys: ClassVar[dict[str, str]] = {"n_cpu_moe": "N"}

    n_cpu_moe: int | None = field(
        default=None,
        metadata={"help": "--n-cpu-moe N: experts of model layers < N on the CPU, the rest on the GPU"},
    )
    gpu_layers: tuple[int, ...] = field(
        default=(), metadata={"help": "explicit model layer indices whose experts are on the GPU"}
    )

    def __post_init__(self) -> None:
        if self.n_cpu_moe is None and not self.gpu_layers:
            raise ValueError("layer-offload needs n_cpu_moe or gpu_layers")
        if self.n_cpu_moe is not None and self.gpu_layers:
            raise ValueError("layer-offload takes n_cpu_moe or gpu_layers, not both")
        if self.n_cpu_moe is not None and self.n_cpu_moe < 0:
            raise ValueError(f"n_cpu_moe must be >= 0, got {self.n_cpu_moe}")
        object.__setattr__(self, "gpu_layers", tuple(int(x) for x in self.gpu_layers))

    def label(self, slots=None) -> str:
        if self.n_cpu_moe is not None:
            return f"{self.name}-N{self.n_cpu_moe}"
        return f"{self.name}-L{len(self.gpu_layers)}"

    def on_gpu(self, moe_layers: tuple[int, ...]) -> np.ndarray:
        """(n_layers,) bool: trace layers whose experts live on the GPU."""
        ml = np.asarray(moe_layers)
        if self.n_cpu_moe is not None:
            return ml >= self.n_cpu_moe
        return np.isin(ml, np.asarray(self.gpu_layers, dtype=ml.dtype))

    def slots_for(self, prep: Prepared, slots: np.ndarray) -> np.ndarray:
        return np.where(self.on_gpu(prep.moe_layers), prep.n_expert, 0).astype(np.int32)

    def initial(self, prep: Prepared, slots: np.ndarray, resident: np.ndarray) -> None:
        for ly in np.flatnonzero(slots > 0):
            resident[ly, : prep.n_expert] = np.arange(prep.n_expert, dtype=np.int32)

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(static_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass,
                                 prep.n_expert, stats, slot_of))
