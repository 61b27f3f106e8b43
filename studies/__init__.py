"""hotexperts.studies: optuna tuning studies under a VRAM budget, run files, plots and reports.

Public API::

    from hotexperts.studies import tune, rebuild_report, TuneConfig
"""

from __future__ import annotations

from typing import Any

__all__ = ["TuneConfig", "tune", "rebuild_report"]


def __getattr__(name: str) -> Any:
    # NOTE: lazy, so importing the package does not import optuna or matplotlib.
    if name == "tune":
        from hotexperts.studies.pipeline import tune

        return tune
    if name == "rebuild_report":
        from hotexperts.studies.report import rebuild_report

        return rebuild_report
    if name == "TuneConfig":
        from hotexperts.studies.tune import TuneConfig

        return TuneConfig
    raise AttributeError(name)
