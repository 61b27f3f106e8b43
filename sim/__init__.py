"""hotexperts.sim"""

__all__: list[str] = []

# cost model, hardware profiles and simulate() (helper H5); the replay engine's names are added beside
from hotexperts.sim.cost import CostBreakdown, StepCounts, evaluate, prefill_throughput, vram_breakdown  # noqa: E402
from hotexperts.sim.hardware import HardwareProfile, hardware_presets, load_hardware  # noqa: E402
from hotexperts.sim.simulate import SimResult, layer_map, map_trace_to_model, simulate  # noqa: E402

__all__ += [
    "CostBreakdown",
    "HardwareProfile",
    "SimResult",
    "StepCounts",
    "evaluate",
    "hardware_presets",
    "layer_map",
    "load_hardware",
    "map_trace_to_model",
    "prefill_throughput",
    "simulate",
    "vram_breakdown",
]

# replay engine (helper H4)
from hotexperts.sim.replay import EVENT_DTYPE, ReplayResult, hit_curve, replay, warmup  # noqa: E402

__all__ += ["EVENT_DTYPE", "ReplayResult", "hit_curve", "replay", "warmup"]

# one-pass textbook LRU / OPT hit curves (issue 14)
from hotexperts.sim.curves import accesses_per_layer, lru_curve, opt_curve  # noqa: E402

__all__ += ["accesses_per_layer", "lru_curve", "opt_curve"]
