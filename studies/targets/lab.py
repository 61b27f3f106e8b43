"""``lab``: every configuration the simulator can score, whether or not a runtime runs it.

For authors of expert-caching forks: per-layer slot allocations for every family (greedy by marginal
hit rate from per-layer LRU curves), both execution modes (``cold-cpu`` and ``fetch-on-miss``), the
``static`` family with the evaluator's learned hot sets. Nothing is written for a runtime: the
configuration goes to ``hotexperts-config.json`` only, and ``hotexperts check`` cannot read it back.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hotexperts.studies.targets._base import RunFiles, Target, WriteContext

__all__ = ["LabTarget"]


class LabTarget(Target):
    name: ClassVar[str] = "lab"
    title: ClassVar[str] = "simulator only (no runtime executes this configuration as scored)"
    families: ClassVar[tuple[str, ...]] = ("fork", "lru", "window", "decay", "static", "layer-offload")
    modes: ClassVar[tuple[str, ...]] = ("cold-cpu", "fetch-on-miss")
    file_names: ClassVar[tuple[str, ...]] = ("hotexperts-config.json",)
    runnable: ClassVar[bool] = False

    def suggest(self, trial: Any, ev: Any, family: str) -> Any:
        from hotexperts.studies.tune import Candidate

        cfg, model = ev.cfg, ev.model
        n = model.n_moe_layers
        if family == "layer-offload":
            n_gpu = trial.suggest_int("layer-offload.gpu_layers", 0, n)
            return Candidate("layer-offload", {"n_cpu_moe": model.n_layer - n_gpu}, [0] * n, target=self.name)
        modes = [m for m in cfg.modes if m in self.modes]
        mode = trial.suggest_categorical("mode", modes) if len(modes) > 1 else modes[0]
        alloc = trial.suggest_categorical("alloc", ["uniform", "greedy"]) if family != "fork" else "uniform"
        kmax = max(1, ev.kmax)
        if alloc == "uniform":
            k = trial.suggest_int("hot_k", 1, kmax)
            slots = [k] * n
        else:
            fill = trial.suggest_float("fill", 0.1, 1.0)
            slots = ev.allocate(fill * max(0.0, ev.free_bytes))
        params: dict[str, Any] = {}
        if family == "fork":
            params["interval"] = trial.suggest_int("fork.interval", 10, 200, step=10)
            params["pp_bypass"] = trial.suggest_categorical("fork.pp_bypass", [0, 8, 32, 64, 128, 512])
        elif family == "lru":
            params["inserts"] = trial.suggest_int("lru.inserts", 1, 16, log=True)
        elif family == "window":
            w = trial.suggest_int("window.window", 4, 64, log=True)
            params["window"] = w
            params["min_sightings"] = trial.suggest_int("window.min_sightings", 1, max(1, min(8, w)))
            params["hyst"] = trial.suggest_int("window.hyst", 0, 4)
            params["cap_bytes"] = trial.suggest_categorical("window.cap_mib", [16, 32, 64, 128, 256, 1024]) << 20
        elif family == "decay":
            params["decay"] = trial.suggest_float("decay.decay", 0.7, 0.99)
            params["pass_interval"] = trial.suggest_int("decay.pass_interval", 1, 8)
            params["admit"] = trial.suggest_float("decay.admit", 0.5, 4.0)
            params["ratio"] = trial.suggest_float("decay.ratio", 1.0, 2.0)
            params["margin"] = trial.suggest_float("decay.margin", 0.0, 2.0)
            params["prompt_weight"] = trial.suggest_float("decay.prompt_weight", 0.0, 0.2)
            params["cap_bytes"] = trial.suggest_categorical("decay.cap_mib", [32, 64, 128, 256, 1024]) << 20
        return Candidate(family, params, slots, mode=mode, alloc=alloc, target=self.name)

    def write(self, cand: Any, ctx: WriteContext) -> RunFiles:
        import json

        doc = {"note": "scored by hotexperts' simulator; no runtime executes this configuration as written",
               **cand.to_json()}
        return RunFiles(files={"hotexperts-config.json": json.dumps(doc, indent=2, default=str) + "\n"},
                        env_file=None, argv=[], notes=[doc["note"]])
