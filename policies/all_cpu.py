"""``all-cpu``: every routed expert is computed on the CPU (llama.cpp ``-ot exps=CPU``).

The baseline of the headline table: no slots, no uploads; every selection is a miss.
Parameters: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from hotexperts.policies._engine import Policy, Prepared, static_kernel

__all__ = ["AllCpu"]


@dataclass(frozen=True)
class AllCpu(Policy):
    """All experts in host memory, computed on the CPU."""

    name: ClassVar[str] = "all-cpu"
    layer_independent: ClassVar[bool] = True
    uses_slots: ClassVar[bool] = False

    def slots_for(self, prep: Prepared, slots: np.ndarray) -> np.ndarray:
        return np.zeros(prep.n_layers, np.int32)

    def run(self, prep, slots, bypass, stats, resident, slot_of, ev) -> int:
        return int(static_kernel(prep.experts, prep.present, prep.has_present, prep.bounds, bypass,
                                 prep.n_expert, stats, slot_of))
