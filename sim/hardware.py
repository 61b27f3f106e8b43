"""Hardware profiles: the measured (or fitted) speeds of one GPU + host machine that the cost model needs.

A :class:`HardwareProfile` is a frozen dataclass whose every field carries help text (``metadata["help"]``)
and a unit. Profiles are JSON files (one object, field name -> value, plus the free-text ``source`` and
``notes``); built-in presets live in ``sim/presets/*.json`` and are loaded by name with
:func:`load_hardware`. Field meanings, units and where each preset number comes from are documented in
``docs/hardware-profiles.md`` (generated from the same help text by ``hotexperts hardware show``).

JSON rules: unknown keys are an error (a misspelt field must not silently fall back to a default);
``name``, ``vram_bytes``, ``gpu_mem_bw``, ``pcie_pinned_bw`` and ``cpu_expert_bw`` are required; every other
field has the default given below.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError

__all__ = [
    "HardwareProfile",
    "load_hardware",
    "hardware_presets",
    "field_help",
]


def _f(default: Any = MISSING, *, help: str, unit: str = "") -> Any:  # noqa: A002
    md = {"help": help, "unit": unit}
    if default is MISSING:
        return field(metadata=md)
    return field(default=default, metadata=md)


@dataclass(frozen=True)
class HardwareProfile:
    """Speeds of one machine (GPU + host) as the cost model (:mod:`hotexperts.sim.cost`) uses them.

    Bandwidths are in GB/s (1e9 bytes per second), times in the unit their name says.
    """

    name: str = _f(help="profile name (a preset name or a free label)")
    vram_bytes: int = _f(help="total GPU memory in bytes (what nvidia-smi reports as total)", unit="B")
    gpu_mem_bw: float = _f(
        help=(
            "achieved VRAM read bandwidth of the dense mat-vecs (and the KV read) at batch 1, not the "
            "datasheet peak; also the expert op's rate unless gpu_expert_bw is set"
        ),
        unit="GB/s",
    )
    pcie_pinned_bw: float = _f(help="host->device copy rate from pinned (page-locked) memory", unit="GB/s")
    cpu_expert_bw: float = _f(
        help=(
            "weight-streaming rate of the CPU expert mat-vecs (bytes of expert weights read per second by "
            "llama.cpp's multi-threaded CPU MoE op at batch 1, all threads); usually fitted"
        ),
        unit="GB/s",
    )
    pcie_pageable_bw: float = _f(10.0, help="host->device copy rate from pageable (mmap'd) memory", unit="GB/s")
    pcie_prefill_bw: float | None = _f(
        None,
        help=(
            "effective host->device rate of the prefill op-offload weight copies (llama.cpp copies host-"
            "resident expert tensors to the GPU once per ubatch of >= op_offload_min_batch tokens); "
            "null = pcie_pinned_bw"
        ),
        unit="GB/s",
    )
    dram_bw: float = _f(
        60.0,
        help="sustained host DRAM read bandwidth available to CPU experts and PCIe uploads together",
        unit="GB/s",
    )
    cpu_threads: int = _f(16, help="CPU threads llama.cpp uses for the expert op (informational)")
    handoff_us: float = _f(
        70.0,
        help=(
            "fixed cost per MoE layer whose step uses any CPU-computed expert: the GPU->CPU copy of the layer "
            "input, the CPU op's thread barrier and the CPU->GPU copy back (CUDA graphs are off then)"
        ),
        unit="us",
    )
    dense_fixed_ms: float = _f(
        10.0,
        help=(
            "fixed GPU time per step beyond streaming the dense weights: kernel launches, syncs, logits "
            "and sampling; usually fitted"
        ),
        unit="ms",
    )
    gpu_expert_fixed_us: float = _f(
        15.0, help="fixed GPU time per MoE layer that computes any expert on the GPU (launches)", unit="us"
    )
    gpu_expert_bw: float | None = _f(
        None,
        help=(
            "weight bytes per second of the GPU's routed-expert op (llama.cpp's mul_mat_id, the runtime's "
            "grouped call) at batch 1; it can differ from the dense mat-vec's gpu_mem_bw (gather, "
            "dequantisation, batched kernels); null = gpu_mem_bw"
        ),
        unit="GB/s",
    )
    miss_sync_us: float | None = _f(
        None,
        help=(
            "fetch-on-miss: fixed cost per MoE layer that fetches any missing expert (the host learning the "
            "layer's routing to issue the copies; no CPU op, no partial sum back); null = handoff_us"
        ),
        unit="us",
    )
    gpu_prefill_ms_per_token: float = _f(
        0.9,
        help=(
            "GPU compute per prompt token in a large ubatch (dense, attention at short context and all "
            "experts' mat-muls), excluding the op-offload weight copies; usually fitted"
        ),
        unit="ms",
    )
    gpu_tflops: float = _f(
        80.0,
        help="effective dense tensor throughput for prefill attention (flash attention, fp16)",
        unit="TFLOP/s",
    )
    op_offload_min_batch: int = _f(
        32,
        help=(
            "ubatches with at least this many tokens run host-resident expert mat-muls on the GPU by "
            "copying the weights over PCIe (llama.cpp's op offload; hard-coded 32)"
        ),
        unit="tokens",
    )
    upload_layer_fixed_us: float = _f(
        20.0, help="fixed cost per layer of a blocking upload batch (stream synchronize)", unit="us"
    )
    staging_copy_bw: float | None = _f(
        None,
        help=(
            "host memcpy rate into the pinned staging buffer that precedes a blocking (fork) upload; "
            "null = not modelled (the copy is taken as hidden in the PCIe time)"
        ),
        unit="GB/s",
    )
    upload_contention: float | None = _f(
        None,
        help=(
            "share of CPU expert bandwidth lost while an overlapped upload streams from host DRAM; null = "
            "derived as max(0, cpu_expert_bw + pcie_pinned_bw - dram_bw) / cpu_expert_bw"
        ),
    )
    vram_overhead_bytes: int = _f(
        500_000_000,
        help="VRAM taken besides weights, KV cache and compute buffer: CUDA context, allocator slack",
        unit="B",
    )
    source: str = _f("", help="where the numbers come from (measurements, fits, datasheets)")
    notes: str = _f("", help="free text")
    fitted: tuple[str, ...] = _f((), help="names of the fields that were fitted rather than measured")

    # ------------------------------------------------------------------ derived
    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("name", "source", "notes", "fitted"):
                continue
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise ValueError(f"hardware field {f.name} must be a finite number, got {v!r}")
            if float(v) < 0:
                raise ValueError(f"hardware field {f.name} must not be negative, got {v}")
        for name in ("gpu_mem_bw", "pcie_pinned_bw", "cpu_expert_bw", "dram_bw", "pcie_pageable_bw", "gpu_expert_bw",
                     "pcie_prefill_bw", "gpu_tflops", "staging_copy_bw"):
            if getattr(self, name) is not None and float(getattr(self, name)) <= 0:
                raise ValueError(f"hardware field {name} must be positive")
        if self.upload_contention is not None and self.upload_contention > 1:
            raise ValueError("upload_contention is a share in [0, 1]")
        object.__setattr__(self, "fitted", tuple(self.fitted))

    @property
    def prefill_pcie_bw(self) -> float:
        """GB/s of the prefill op-offload copies (``pcie_prefill_bw`` or the pinned rate)."""
        return float(self.pcie_prefill_bw if self.pcie_prefill_bw is not None else self.pcie_pinned_bw)

    @property
    def expert_bw(self) -> float:
        """GB/s of the GPU expert op (``gpu_expert_bw`` or ``gpu_mem_bw``)."""
        return float(self.gpu_expert_bw if self.gpu_expert_bw is not None else self.gpu_mem_bw)

    @property
    def miss_sync_s(self) -> float:
        """Seconds of the per-layer fixed cost of a fetch-on-miss layer (``miss_sync_us`` or ``handoff_us``)."""
        return float(self.miss_sync_us if self.miss_sync_us is not None else self.handoff_us) * 1e-6

    @property
    def contention(self) -> float:
        """Share of CPU expert bandwidth lost while an overlapped upload streams (see ``upload_contention``)."""
        if self.upload_contention is not None:
            return float(self.upload_contention)
        return max(0.0, min(1.0, (self.cpu_expert_bw + self.pcie_pinned_bw - self.dram_bw) / self.cpu_expert_bw))

    def replace(self, **changes: Any) -> HardwareProfile:
        d = self.to_dict()
        unknown = set(changes) - set(d)
        if unknown:
            raise ValueError(f"unknown hardware field(s): {', '.join(sorted(unknown))}")
        d.update(changes)
        return HardwareProfile.from_dict(d)

    # --------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fitted"] = list(self.fitted)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str | os.PathLike[str] | None = None) -> HardwareProfile:
        """Build a profile from a JSON object; unknown keys and missing required keys raise InputError."""
        where = path if path is not None else "<hardware>"
        if not isinstance(d, dict):
            raise InputError(where, f"a hardware profile must be a JSON object, got {type(d).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InputError(
                where, f"unknown hardware field(s): {', '.join(unknown)} (known: {', '.join(known)})"
            )
        missing = [n for n, f in known.items() if f.default is MISSING and n not in d]
        if missing:
            raise InputError(where, f"missing required hardware field(s): {', '.join(missing)}")
        kw = dict(d)
        for name in ("name", "source", "notes"):
            if name in kw and not isinstance(kw[name], str):
                raise InputError(where, f"hardware field {name} must be a string, got {kw[name]!r}")
        if "fitted" in kw:
            if not isinstance(kw["fitted"], (list, tuple)) or not all(isinstance(x, str) for x in kw["fitted"]):
                raise InputError(where, f"hardware field fitted must be a list of field names, got {kw['fitted']!r}")
            kw["fitted"] = tuple(kw["fitted"])
        try:
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise InputError(where, str(exc)) from None

    def save(self, path: str | os.PathLike[str]) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> HardwareProfile:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(p, "no such hardware profile file") from None
        except OSError as exc:
            raise InputError(p, f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InputError(p, "not UTF-8 text (a hardware profile is a JSON file)") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(p, f"not valid JSON: {exc.msg}", where=f"line {exc.lineno}") from None
        return cls.from_dict(d, path=p)


def field_help() -> list[tuple[str, str, str, Any]]:
    """``(name, unit, help, default)`` for every field, in declaration order (default ``None`` if required)."""
    out = []
    for f in fields(HardwareProfile):
        default = None if f.default is MISSING else f.default
        out.append((f.name, f.metadata.get("unit", ""), f.metadata["help"], default))
    return out


def _preset_dir() -> Any:
    return resources.files("hotexperts.sim").joinpath("presets")


def hardware_presets() -> list[str]:
    """Names of the built-in hardware presets (files ``sim/presets/*.json``)."""
    names = []
    for entry in _preset_dir().iterdir():
        if entry.name.endswith(".json"):
            names.append(entry.name[: -len(".json")])
    return sorted(names)


def load_hardware(spec: str | os.PathLike[str] | HardwareProfile) -> HardwareProfile:
    """A preset name (``rtx4090-7950x``, ``h200-host``) or a path to a JSON profile."""
    if isinstance(spec, HardwareProfile):
        return spec
    s = os.fspath(spec)
    if s in hardware_presets():
        entry = _preset_dir().joinpath(f"{s}.json")
        return HardwareProfile.from_dict(json.loads(entry.read_text(encoding="utf-8")), path=f"preset {s}")
    p = Path(s)
    if p.suffix.lower() == ".json" or p.exists() or os.sep in s:
        return HardwareProfile.load(p)
    raise InputError(
        None, f"unknown hardware {s!r}: not a preset ({', '.join(hardware_presets())}) nor a JSON file"
    )
