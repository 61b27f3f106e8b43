"""hotexperts.runtime: the live engine (torch), its calibration and the live-vs-simulated validation.

Names are imported lazily so that importing the package (e.g. for the CLI) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EngineShape", "MoEEngine", "RunResult", "Schedule", "calibrate", "validate"]

_WHERE = {
    "EngineShape": "engine",
    "MoEEngine": "engine",
    "RunResult": "engine",
    "Schedule": "engine",
    "calibrate": "calibrate",
    "validate": "validate",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"hotexperts.runtime.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hotexperts.runtime' has no attribute {name!r}")
