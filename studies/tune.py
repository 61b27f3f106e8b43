"""Tuning studies: the best caching policy and settings for a VRAM budget, found with optuna.

The study searches the policy family (``fork``, ``lru``, ``window``, ``decay``, ``static``,
``layer-offload``), the execution mode (cold experts on the CPU, or fetch-on-miss), the slots per
layer and each family's parameters. Slots are either one uniform K, or a per-layer allocation made
greedily by marginal hit-rate gain from per-layer hit curves, under a fraction of the VRAM left after
the fixed parts (non-expert weights, KV cache for the context, compute buffer).

A trial whose configuration does not fit the VRAM budget is pruned (state PRUNED), not scored.
The objective is the predicted decode tok/s, or with ``prefill_weight = w`` the throughput of a
workload whose tokens are a share ``w`` of prompt tokens: ``1 / ((1 - w) / decode + w / prefill)``.
Multi-objective mode maximises that and minimises VRAM (a Pareto front).

Storage: SQLite under the output folder by default (rerunning continues the same study), or any
optuna RDB URL (``postgresql://...``) shared by many workers on many hosts; the total number of
finished trials is capped at ``trials`` across all workers (:class:`optuna.study.MaxTrialsCallback`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import write_text_atomic
from hotexperts.errors import HotExpertsError, InputError
from hotexperts.modelspec import ModelSpec, load_model_spec
from hotexperts.tracer.trace import PHASE_DECODE, Trace

__all__ = [
    "FAMILIES",
    "TuneConfig",
    "Evaluator",
    "Candidate",
    "default_trace",
    "greedy_allocation",
    "open_study",
    "run_study",
]

FAMILIES: tuple[str, ...] = ("fork", "lru", "window", "decay", "static", "layer-offload")
MODES: tuple[str, ...] = ("cold-cpu", "fetch-on-miss")
GiB = float(1 << 30)
#: the fork's published configuration (hot-cache-mechanism.md headline run)
FORK_DEFAULT = {"hot_k": 44, "interval": 60, "pp_bypass": 64}


@dataclass(frozen=True)
class TuneConfig:
    """Everything that defines a study (its hash names the study)."""

    model: str = field(metadata={"help": "model preset name or GGUF path"})
    hardware: str = field(metadata={"help": "hardware preset name or profile JSON"})
    vram_gb: float = field(metadata={"help": "GPU memory budget in GiB"})
    context: int = field(metadata={"help": "KV cache size in tokens"})
    kv_type: str = field(default="q8_0", metadata={"help": "KV cache type"})
    trials: int = field(default=200, metadata={"help": "finished trials (complete + pruned) to reach"})
    seed: int = field(default=0, metadata={"help": "sampler seed"})
    policies: tuple[str, ...] = field(default=FAMILIES, metadata={"help": "policy families searched"})
    modes: tuple[str, ...] = field(default=MODES, metadata={"help": "execution modes searched"})
    prefill_weight: float = field(default=0.0, metadata={"help": "share of prompt tokens in the objective"})
    multi_objective: bool = field(default=False, metadata={"help": "tok/s vs VRAM Pareto front"})
    remap: bool = field(default=False, metadata={"help": "map trace layers onto the model's"})
    ubatch: int = field(default=512, metadata={"help": "ubatch size the compute buffer is sized for"})
    target: str = field(default="any", metadata={"help": "runtime(s) the recommendation must run on (any = every runnable one)"})
    holdout: float = field(default=0.0, metadata={"help": "share of the trace's requests held out for evaluation"})
    eval_trace: str | None = field(default=None, metadata={"help": "a second trace to evaluate on (held out)"})
    trace: str | None = field(default=None, metadata={"help": "trace path; None = synthetic default"})
    trace_sha: str = field(default="", metadata={"help": "sha256 of the trace file used"})

    def __post_init__(self) -> None:
        bad = [p for p in self.policies if p not in FAMILIES]
        if bad:
            raise InputError(None, f"unknown policy families {bad}; known: {', '.join(FAMILIES)}")
        badm = [m for m in self.modes if m not in MODES]
        if badm:
            raise InputError(None, f"unknown modes {badm}; known: {', '.join(MODES)}")
        if not self.policies:
            raise InputError(None, "no policy family to search")
        if self.trials <= 0:
            raise InputError(None, f"--trials must be positive, got {self.trials}")
        if not 0.0 <= self.prefill_weight <= 1.0:
            raise InputError(None, f"--prefill-weight must be in [0, 1], got {self.prefill_weight}")
        if not math.isfinite(self.vram_gb) or self.vram_gb <= 0:
            raise InputError(None, f"--vram-gb must be a positive number, got {self.vram_gb}")
        if not self.modes:
            raise InputError(None, "no execution mode to search (--modes is empty)")
        from hotexperts.modelspec import KV_TYPE_BYTES

        if self.kv_type not in KV_TYPE_BYTES:
            raise InputError(None, f"unknown --kv-type {self.kv_type!r}; known: {', '.join(KV_TYPE_BYTES)}")
        if self.ubatch <= 0:
            raise InputError(None, f"--ubatch must be positive, got {self.ubatch}")
        if not 0.0 <= self.holdout < 1.0 or not math.isfinite(self.holdout):
            raise InputError(None, f"--holdout must be in [0, 1), got {self.holdout}")
        if self.holdout > 0 and self.eval_trace is not None:
            raise InputError(None, "give --holdout or --eval, not both")
        if self.context < 0:
            raise InputError(None, f"--context must be >= 0, got {self.context}")
        from hotexperts.studies.targets import resolve_targets, target_for_family

        targets = resolve_targets(self.target)
        fams = [p for p in self.policies if target_for_family(targets, p) is not None]
        if not fams:
            names = ", ".join(t.name for t in targets)
            raise InputError(None, f"--target {self.target} ({names}) runs none of the families {', '.join(self.policies)}; "
                                   "--target lab scores any configuration")
        modes = {m for t in targets for m in t.modes}
        if not modes & set(self.modes):
            raise InputError(None, f"--target {self.target} runs only mode(s) {', '.join(sorted(modes))}, not "
                                   f"{', '.join(self.modes)}; --target lab scores any mode")

    def key(self) -> str:
        """Hash of what defines the search (not the trial count): the default study name."""
        d = asdict(self)
        d.pop("trials")
        d.pop("trace")  # the content hash identifies the trace
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["policies"] = list(self.policies)
        d["modes"] = list(self.modes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TuneConfig:
        d = dict(d)
        d["policies"] = tuple(d.get("policies", FAMILIES))
        d["modes"] = tuple(d.get("modes", MODES))
        d.setdefault("target", "lab")  # NOTE: studies written before targets existed searched everything
        return cls(**d)


# ------------------------------------------------------------------------------------- trace
def default_trace(model: ModelSpec, *, seed: int = 0, n_requests: int = 4, prompt_tokens: int = 1024,
                  decode_tokens: int = 512, ubatch: int = 512) -> Trace:
    """The embedded default: a synthetic trace for the model's shape (``hotexperts.tracer.synth``)."""
    from hotexperts.tracer.synth import params_for_model, sample_synth

    params = params_for_model(model)
    return sample_synth(
        params,
        n_tokens=n_requests * (prompt_tokens + decode_tokens),
        n_requests=n_requests,
        prompt_tokens=prompt_tokens,
        ubatch=ubatch,
        seed=seed,
        n_layers=model.n_moe_layers,
        n_expert=model.n_expert,
        top_k=model.n_expert_used,
        moe_layers=model.moe_layers,
        meta={"model": model.to_dict(), "source": {"kind": "synthetic", "for": model.name}},
    )


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- allocation
def greedy_allocation(curves: np.ndarray, ks: np.ndarray, expert_bytes: np.ndarray, budget_bytes: float,
                      n_expert: int) -> np.ndarray:
    """Slots per layer maximising the summed hit rate under a byte budget, one slot at a time.

    ``curves``: ``(n_layers, len(ks))`` hit rate of each layer at the slot counts ``ks`` (increasing,
    starting at 0), interpolated linearly. Every layer serves the same number of selections per token,
    and a hit saves CPU time in proportion to the layer's expert bytes while a slot costs VRAM in the
    same proportion, so the greedy key is the marginal hit rate per slot.
    """
    n_layers = curves.shape[0]
    grid = np.arange(n_expert + 1)
    dense = np.stack([np.interp(grid, ks, curves[i]) for i in range(n_layers)])  # (L, E+1)
    gain = np.diff(dense, axis=1)  # (L, E): gain of the (s+1)-th slot
    # NOTE: make gains non-increasing per layer (concave envelope by running minimum) so greedy is exact
    gain = np.minimum.accumulate(np.maximum(gain, 0.0), axis=1)
    order = np.argsort(-gain, axis=None, kind="stable")
    slots = np.zeros(n_layers, np.int64)
    used = 0.0
    # walk slots in decreasing gain; a layer's slots come in order because gains are non-increasing
    for flat in order:
        layer = int(flat // n_expert)
        if used + expert_bytes[layer] > budget_bytes:
            continue
        if slots[layer] >= n_expert:
            continue
        slots[layer] += 1
        used += float(expert_bytes[layer])
    return slots.astype(np.int32)


# -------------------------------------------------------------------------------- evaluator
@dataclass
class Candidate:
    """One configuration: policy family, its parameters, slots per model MoE layer and mode.

    ``target`` names the runtime it is written for (``hotexperts.studies.targets``) and ``knobs`` the
    runtime settings that are not policy parameters (a profile budget in MiB, a profile section...);
    ``counts`` are the per-layer routing counts a ``static`` hot set is chosen from (the profile the
    runtime reads), None for the evaluator's own.
    """

    policy: str
    params: dict[str, Any]
    slots: list[int]
    mode: str = "cold-cpu"
    alloc: str = "uniform"
    target: str = "lab"
    knobs: dict[str, Any] = field(default_factory=dict)
    counts: np.ndarray | None = field(default=None, repr=False, compare=False)

    def key(self) -> str:
        extra = "" if self.counts is None else hashlib.sha1(np.ascontiguousarray(self.counts).tobytes()).hexdigest()
        return json.dumps([self.policy, self.params, self.slots, self.mode, self.target, self.knobs, extra],
                          sort_keys=True, default=str)

    def to_json(self) -> dict[str, Any]:
        """JSON form (what a trial stores; ``counts`` left out)."""
        return {"policy": self.policy, "params": self.params, "slots": [int(x) for x in self.slots],
                "mode": self.mode, "alloc": self.alloc, "target": self.target, "knobs": self.knobs}


class Evaluator:
    """Simulates candidates on one trace, model, machine and budget (results cached by candidate)."""

    def __init__(self, trace: Trace, model: ModelSpec, hardware: Any, cfg: TuneConfig) -> None:
        from hotexperts.sim.cost import vram_breakdown
        from hotexperts.sim.simulate import map_trace_to_model
        from hotexperts.studies.targets import resolve_targets

        self.cfg = cfg
        self.model = model
        self.hw = hardware
        self.targets = tuple(t for t in resolve_targets(cfg.target) if t.supports(model) is None)
        self.unsupported = {t.name: str(t.supports(model)) for t in resolve_targets(cfg.target) if t.supports(model)}
        self.trace, _ = map_trace_to_model(trace, model, remap=cfg.remap, path=cfg.trace)
        self.budget = float(cfg.vram_gb) * GiB
        self.expert_bytes = np.asarray(model.expert_bytes, np.float64)
        self._vram_breakdown = vram_breakdown
        base = self.vram(np.zeros(model.n_moe_layers, np.int64))
        self.fixed_bytes = float(base["total"])
        self.free_bytes = self.budget - self.fixed_bytes
        self.kmax = int(max(0, min(model.n_expert, self.free_bytes // max(1.0, self.expert_bytes.sum()))))
        self._cache: dict[str, Any] = {}
        self._curves: np.ndarray | None = None
        self._curve_ks: np.ndarray | None = None
        self._static_counts: np.ndarray | None = None
        self._profile: Any = None

    # -- VRAM
    def vram(self, slots: Sequence[int] | np.ndarray) -> dict[str, Any]:
        return self._vram_breakdown(
            self.model, np.asarray(slots, np.int64), context=self.cfg.context, kv_type=self.cfg.kv_type,
            hardware=self.hw, ubatch=self.cfg.ubatch, vram_budget_bytes=self.budget,
        )

    def slots_of(self, cand: Candidate) -> np.ndarray:
        """Resident experts per model MoE layer the candidate occupies in VRAM."""
        if cand.policy == "layer-offload":
            pol = self.policy_config(cand)
            on = pol.on_gpu(self.model.moe_layers)  # type: ignore[attr-defined]
            return np.where(on, self.model.n_expert, 0).astype(np.int64)
        if cand.policy == "all-cpu":
            return np.zeros(self.model.n_moe_layers, np.int64)
        return np.asarray(cand.slots, np.int64)

    def vram_of(self, cand: Candidate) -> dict[str, Any]:
        """The VRAM breakdown of ``cand`` as its target runs it (zero slots and id tables included)."""
        from hotexperts.studies.targets import REGISTRY

        vb = self.vram(self.slots_of(cand))
        t = REGISTRY.get(cand.target)
        extra = float(t.vram_extra(cand, self.model)) if t is not None else 0.0
        if extra:
            vb["runtime_extra"] = extra
            vb["total"] = float(vb["total"]) + extra
            vb["free"] = float(vb["budget"]) - vb["total"]
            vb["fits"] = bool(vb["total"] <= vb["budget"])
        return vb

    def fits(self, cand: Candidate) -> tuple[bool, dict[str, Any]]:
        vb = self.vram_of(cand)
        return bool(vb["fits"]), vb

    # -- curves for the per-layer allocation
    def layer_curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer LRU decode hit rates at a grid of slot counts (computed once)."""
        if self._curves is None:
            from hotexperts.sim.curves import accesses_per_layer, lru_curve

            ne = self.model.n_expert
            ks = sorted({0, *[k for k in (2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512) if k < ne], ne})
            # NOTE: textbook LRU (lru-textbook), every K in one stack pass, decode requests counted
            hits = lru_curve(self.trace, ks, count="decode")
            curves = hits / np.maximum(accesses_per_layer(self.trace, count="decode"), 1)[:, None]
            curves[:, np.asarray(ks) == ne] = 1.0
            self._curves, self._curve_ks = curves, np.asarray(ks, np.float64)
        assert self._curve_ks is not None
        return self._curves, self._curve_ks

    def allocate(self, budget_bytes: float) -> list[int]:
        curves, ks = self.layer_curves()
        return [int(x) for x in greedy_allocation(curves, ks, self.expert_bytes, budget_bytes, self.model.n_expert)]

    def training_trace(self) -> Trace:
        """The part of the trace hot sets are learned from: the first half of its requests (in order of
        appearance) when it has several, else everything before the second half of its decode tokens (the
        prompts included): what a user's profiling run would have seen.

        NOTE: learning the hot set from the very tokens it is scored on would flatter it; the study still
        scores on the whole trace, so half of a static score is in-sample: `--holdout`/`--eval` report
        every configuration on requests nothing was learned from.
        """
        req = self.trace.request
        if self.trace.n_requests >= 2:
            _, first = np.unique(req, return_index=True)
            order = req[np.sort(first)]
            learn = np.isin(req, order[: order.size // 2])
            return self.trace.select(learn)
        dec = np.flatnonzero(self.trace.phase == PHASE_DECODE)
        cut = int(dec[len(dec) // 2]) if dec.size else self.trace.n_tokens
        if cut <= 0:
            return self.trace
        mask = np.zeros(self.trace.n_tokens, bool)
        mask[:cut] = True
        return self.trace.select(mask)

    def profile(self) -> Any:
        """The ``.moeprof`` profile of :meth:`training_trace` (what a static run file ships)."""
        if self._profile is None:
            from hotexperts.tracer.profile import profile_from_trace

            self._profile = profile_from_trace(self.training_trace(), source="hotexperts-tune")
        return self._profile

    def static_counts(self) -> np.ndarray:
        """Counts for the static family: the ``decode_union`` section of :meth:`profile`, per MoE layer."""
        if self._static_counts is None:
            tab = np.asarray(self.profile().sections["decode_union"])
            self._static_counts = tab[list(self.model.moe_layers)].astype(np.float64)
        return self._static_counts

    # -- policies
    def policy_config(self, cand: Candidate) -> Any:
        from hotexperts.policies import make_policy

        p = dict(cand.params)
        if cand.policy in ("window", "decay"):
            p.setdefault("expert_bytes", int(self.expert_bytes.mean()))
            if cand.knobs.get("profile") == "file":
                # NOTE: an adaptive set seeded from the profile the run files ship
                p["init_counts"] = self.static_counts() if cand.counts is None else cand.counts
        if cand.policy == "static":
            p = {"counts": self.static_counts() if cand.counts is None else cand.counts,
                 **{k: v for k, v in cand.params.items() if k != "counts"}}
        if cand.policy == "layer-offload" and "gpu_layers" in p:
            p["gpu_layers"] = tuple(p["gpu_layers"])
        return make_policy(cand.policy, **p)

    def evaluate(self, cand: Candidate, *, keep_arrays: bool = False) -> Any:
        """Simulate the candidate (a :class:`hotexperts.sim.simulate.SimResult`), cached.

        ``keep_arrays``: keep the per-step arrays (``cost``, ``replay``) too; such results are not cached.
        """
        from hotexperts.sim.simulate import simulate

        k = cand.key()
        if keep_arrays:
            return simulate(
                self.trace, self.model, self.hw, self.policy_config(cand), np.asarray(cand.slots, np.int64),
                mode=cand.mode, vram_gb=self.cfg.vram_gb, context=self.cfg.context, kv_type=self.cfg.kv_type,
                ubatch=self.cfg.ubatch, warm_up=False,
            )
        if k not in self._cache:
            self._cache[k] = simulate(
                self.trace, self.model, self.hw, self.policy_config(cand), np.asarray(cand.slots, np.int64),
                mode=cand.mode, vram_gb=self.cfg.vram_gb, context=self.cfg.context, kv_type=self.cfg.kv_type,
                ubatch=self.cfg.ubatch, warm_up=False, keep_arrays=False,  # lean cache: one result per trial
            )
        return self._cache[k]

    def objective(self, res: Any) -> float:
        d = res.decode_tok_s or 0.0
        w = self.cfg.prefill_weight
        if w <= 0:
            return float(d)
        p = res.prefill_tok_s or 0.0
        if d <= 0 or p <= 0:
            return 0.0
        return 1.0 / ((1 - w) / d + w / p)

    # -- baselines
    def best_layer_offload(self) -> Candidate:
        """The largest ``--n-cpu-moe`` GPU share (last layers) that fits: what users run today."""
        n_layer = self.model.n_layer
        best = Candidate("layer-offload", {"n_cpu_moe": n_layer}, [0] * self.model.n_moe_layers, target="mainline")
        for n_cpu in range(n_layer, -1, -1):
            cand = Candidate("layer-offload", {"n_cpu_moe": n_cpu}, [0] * self.model.n_moe_layers, target="mainline")
            if self.fits(cand)[0]:
                best = cand
            else:
                break
        return best

    def baselines(self) -> dict[str, Candidate]:
        from hotexperts.studies.targets import REGISTRY

        out = {
            "all-cpu": Candidate("all-cpu", {}, [0] * self.model.n_moe_layers, target="mainline"),
            "best-n-cpu-moe": self.best_layer_offload(),
        }
        fork = Candidate(
            "fork", {"interval": FORK_DEFAULT["interval"], "pp_bypass": FORK_DEFAULT["pp_bypass"]},
            [min(FORK_DEFAULT["hot_k"], self.model.n_expert)] * self.model.n_moe_layers, target="fork",
        )
        if self.fits(fork)[0] and REGISTRY["fork"].supports(self.model) is None:
            out["fork-default"] = fork
        return out


# ----------------------------------------------------------------------------- search space
def suggest(trial: Any, ev: Evaluator) -> Candidate:
    """Sample a candidate from the trial: a family, then the knobs of the target that runs it.

    The family's target is the first of the study's targets (registry order) that runs it; the target
    turns its knobs into the configuration the runtime executes (``hotexperts.studies.targets``).
    """
    from hotexperts.studies.targets import target_for_family

    fams = [p for p in ev.cfg.policies if target_for_family(ev.targets, p) is not None]
    fam = trial.suggest_categorical("policy", fams)
    target = target_for_family(ev.targets, fam)
    assert target is not None
    return target.suggest(trial, ev, fam)


def candidate_from_trial(trial: Any) -> Candidate:
    """The candidate a finished trial evaluated (stored as a user attribute)."""
    c = trial.user_attrs["candidate"]
    return Candidate(c["policy"], c["params"], c["slots"], c.get("mode", "cold-cpu"), c.get("alloc", "uniform"),
                     target=c.get("target", "lab"), knobs=c.get("knobs", {}))


def objective_fn(ev: Evaluator) -> Callable[[Any], Any]:
    import optuna

    def fn(trial: Any) -> Any:
        # NOTE: first, so that a run killed during this trial can be recognised (fail_dead_trials)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        cand = suggest(trial, ev)
        trial.set_user_attr("candidate", cand.to_json())
        ok, vb = ev.fits(cand)
        trial.set_user_attr("vram_bytes", float(vb["total"]))
        if not ok:
            trial.set_user_attr("infeasible", f"needs {vb['total'] / GiB:.2f} GiB of {vb['budget'] / GiB:.2f}")
            raise optuna.TrialPruned()
        res = ev.evaluate(cand)
        value = ev.objective(res)
        trial.set_user_attr("decode_tok_s", res.decode_tok_s)
        trial.set_user_attr("prefill_tok_s", res.prefill_tok_s)
        trial.set_user_attr("hit_rate", res.hit_rate)
        trial.set_user_attr("label", res.label)
        if ev.cfg.multi_objective:
            return value, float(vb["total"]) / GiB
        return value

    return fn


# ---------------------------------------------------------------------------------- studies
def storage_url(cfg_storage: str | None, out_dir: Path) -> str:
    if cfg_storage:
        return cfg_storage
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


# any fixed 64-bit number: the PostgreSQL advisory lock that serialises optuna's schema creation
_PG_SCHEMA_LOCK = 0x68_6F_74_65_78_70  # "hotexp"


def _rdb_storage(rdb_cls: Any, url: str, kwargs: dict[str, Any]) -> Any:
    """``RDBStorage(url)``, safe when several workers create the schema of a fresh database at once.

    optuna creates its tables (and, on PostgreSQL, enum types) with check-then-create, so two workers
    starting together on an empty database race: the loser fails with a duplicate ``pg_type`` key. On
    PostgreSQL a session advisory lock makes the creation one-at-a-time; on any dialect a creation that
    still collides (another worker's objects appeared in between) is retried, and then finds them.
    """
    import sqlalchemy

    def make() -> Any:
        if not url.startswith("postgresql"):
            return rdb_cls(url, **kwargs)
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
                try:
                    return rdb_cls(url, **kwargs)
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_SCHEMA_LOCK})
        finally:
            engine.dispose()

    for attempt in range(4):
        try:
            return make()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # NOTE: "already exists" from a concurrent creation; a connection failure is not retried
            time.sleep(0.2 * (attempt + 1))
    return make()


@contextlib.contextmanager
def _study_lock(url: str) -> Any:
    """An exclusive lock beside a SQLite study file while a process creates or joins the study.

    NOTE: two ``tune`` runs starting on one new folder raced on optuna's table creation ("table studies
    already exists") and, seeded alike, sampled the same configurations; under the lock each one sees what
    the other created and enqueued. Other storages rely on :func:`_rdb_storage`.
    """
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(url[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, which nobody reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # NOTE: no /proc (not Linux): a signal could be delivered, so it runs


def fail_dead_trials(study: Any) -> int:
    """Mark FAIL the RUNNING trials whose worker (``host:pid``) was on this host and is gone (a killed run)."""
    import datetime as _dt

    from optuna.trial import TrialState

    host = socket.gethostname()
    now = _dt.datetime.now()
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = str(t.user_attrs.get("worker", ""))
        h, _, pid = w.rpartition(":")
        dead = h == host and pid.isdigit() and not _pid_alive(int(pid))
        if not w and t.datetime_start is not None:
            # NOTE: killed between the trial's creation and its first write (the worker attribute, set first
            # thing): a live trial writes it at once, so one without it for this long is dead
            dead = (now - t.datetime_start).total_seconds() > UNNAMED_RUNNING_GRACE_S
        if dead:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            n += 1
    return n


#: seconds after which a RUNNING trial that never recorded its worker is taken as killed
UNNAMED_RUNNING_GRACE_S = 60.0


def open_study(url: str, name: str, cfg: TuneConfig, *, worker: int = 0, evaluator: Evaluator | None = None) -> Any:
    """Create or load the study (resumable); with ``evaluator``, also enqueue the seed trials.

    Trials left RUNNING by a killed run on this host are marked FAIL. The sampler's seed is ``seed + 1000 x
    worker`` plus the number of trials the study already holds, so a rerun or a second process joining
    the study never replays the first one's samples, while a new single-worker study stays reproducible.
    """
    import warnings

    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # NOTE: several local processes share one SQLite file; wait for its lock instead of failing
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    else:
        kwargs["engine_kwargs"] = {"pool_pre_ping": True}
    directions: list[Any] = ["maximize", "minimize"] if cfg.multi_objective else ["maximize"]
    with _study_lock(url):
        try:
            storage = _rdb_storage(RDBStorage, url, kwargs)
        except Exception as exc:  # any driver/connection failure becomes one line
            raise HotExpertsError(f"cannot open study storage {url!r}: {type(exc).__name__}: "
                                  f"{(str(exc).splitlines() or [''])[0]}") from None
        for attempt in range(5):
            try:
                study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                            load_if_exists=True)
                break
            except Exception:  # NOTE: two workers creating the same study at once: the loser loads it
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        fail_dead_trials(study)
        already = len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + 1000 * worker + already, multivariate=True,
                                                   group=True, n_startup_trials=min(20, max(5, cfg.trials // 10)))
        stored = study.user_attrs.get("config")
        if stored is None:
            study.set_user_attr("config", cfg.to_json())
        if evaluator is not None:
            enqueue_seeds(study, evaluator)
    return study


def finished_count(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def enqueue_seeds(study: Any, ev: Evaluator) -> None:
    """Start from what users run: the fork's defaults, the largest K, LRU, the best layer offload."""
    if study.user_attrs.get("seeded"):
        return
    study.set_user_attr("seeded", True)
    from hotexperts.studies.targets import target_for_family

    fams = [p for p in ev.cfg.policies if target_for_family(ev.targets, p) is not None]
    kmax = max(1, ev.kmax)
    seeds: list[dict[str, Any]] = []
    if "fork" in fams:
        k = min(FORK_DEFAULT["hot_k"], kmax)
        seeds.append({"policy": "fork", "mode": "cold-cpu", "hot_k": k, "fork.interval": 60, "fork.pp_bypass": 64})
        seeds.append({"policy": "fork", "mode": "cold-cpu", "hot_k": kmax, "fork.interval": 60, "fork.pp_bypass": 64})
    if "lru" in fams:
        seeds.append({"policy": "lru", "mode": "cold-cpu", "alloc": "uniform", "hot_k": kmax, "lru.inserts": 2})
    if "decay" in fams:
        seeds.append({"policy": "decay", "mode": "cold-cpu", "alloc": "uniform", "hot_k": kmax})
    if "layer-offload" in fams:
        n_gpu = ev.model.n_layer - int(ev.best_layer_offload().params["n_cpu_moe"])
        seeds.append({"policy": "layer-offload", "layer-offload.gpu_layers": max(0, n_gpu), "layer-offload.order": "last"})
    unique: dict[str, dict[str, Any]] = {}
    for s in seeds:
        if len(ev.cfg.modes) == 1:
            s.pop("mode", None)
        unique.setdefault(json.dumps(s, sort_keys=True), s)  # NOTE: K=44 and the largest K can be the same
    for s in unique.values():
        study.enqueue_trial(s, skip_if_exists=True)


def _optimize(study: Any, ev: Evaluator, total: int, progress: Callable[[], None] | None) -> None:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    # NOTE: optuna logs a failed trial's whole traceback at WARNING (53 lines for a Ctrl-C); the exception
    # itself still reaches the caller, which prints one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    remaining = total - finished_count(study)
    if remaining <= 0:
        return
    cbs: list[Any] = [MaxTrialsCallback(total, states=(TrialState.COMPLETE, TrialState.PRUNED))]
    if progress is not None:
        cbs.append(lambda s, t: progress())
    study.optimize(objective_fn(ev), n_trials=remaining, callbacks=cbs, gc_after_trial=False)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this worker when its parent dies, and end on SIGTERM (no orphan workers)."""
    import signal

    def _term(signum: int, frame: Any) -> None:
        # NOTE: end at once: raising here could wait on a replay thread pool or a database commit; the trial
        # in flight stays RUNNING and is marked FAIL when the study is opened again (fail_dead_trials)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent-pid check below still ends a late start
        pass
    if os.getppid() != parent:
        raise SystemExit(0)


def _worker_main(args: tuple[str, str, dict[str, Any], str, int, int, int]) -> None:
    url, name, cfg_json, trace_path, total, worker, parent = args
    _die_with_parent(parent)
    cfg = TuneConfig.from_json(cfg_json)
    ev = build_evaluator(cfg, Trace.load(trace_path))
    study = open_study(url, name, cfg, worker=worker)
    try:
        _optimize(study, ev, total, None)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def build_evaluator(cfg: TuneConfig, trace: Trace) -> Evaluator:
    from hotexperts.sim.hardware import load_hardware

    model = load_model_spec(cfg.model)
    hw = load_hardware(cfg.hardware)
    ev = Evaluator(trace, model, hw, cfg)
    from hotexperts.studies.targets import target_for_family

    if not any(target_for_family(ev.targets, p) for p in cfg.policies):
        why = "; ".join(ev.unsupported.values()) or f"--target {cfg.target} runs none of {', '.join(cfg.policies)}"
        raise InputError(None, f"no runtime of --target {cfg.target} can run {model.name}: {why}")
    if ev.free_bytes < 0:
        raise InputError(
            None,
            f"impossible budget: {cfg.vram_gb:g} GiB cannot hold {model.name}'s non-expert weights, KV cache for "
            f"{cfg.context} tokens ({cfg.kv_type}) and compute buffer ({ev.fixed_bytes / GiB:.2f} GiB without any expert)",
        )
    return ev


def run_study(cfg: TuneConfig, trace: Trace, out_dir: Path, *, study_name: str | None, storage: str | None,
              jobs: int = 1, progress: bool = True, evaluator: Evaluator | None = None) -> tuple[Any, Evaluator, str, str]:
    """Run (or continue) the study until ``cfg.trials`` trials are finished; returns (study, evaluator, url, name)."""
    from tqdm.auto import tqdm

    ev = evaluator if evaluator is not None else build_evaluator(cfg, trace)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out_dir)
    name = study_name or f"hotexperts-{cfg.key()}"
    study = open_study(url, name, cfg, evaluator=ev)
    done0 = finished_count(study)
    bar = tqdm(total=cfg.trials, initial=min(done0, cfg.trials), desc="tune", unit="trial",
               disable=not progress, leave=False)
    try:
        if jobs <= 1:
            _optimize(study, ev, cfg.trials, bar.update)
        else:
            trace_path = out_dir / "trace.hxt"
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main,
                                 args=((url, name, cfg.to_json(), str(trace_path), cfg.trials, w + 1, os.getpid()),))
                     for w in range(jobs)]
            try:
                for p in procs:
                    p.start()
                while any(p.is_alive() for p in procs):
                    time.sleep(0.5)
                    bar.n = min(cfg.trials, finished_count(study))
                    bar.refresh()
            finally:
                # NOTE: on Ctrl-C or an error here, the workers stop too (SIGTERM, then they are joined)
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    p.join()
            failed = [p.exitcode for p in procs if p.exitcode]
            if failed:
                raise HotExpertsError(f"{len(failed)} tuning worker(s) failed (exit codes {failed})")
    finally:
        bar.close()
    return study, ev, url, name


def completed(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "candidate" in t.user_attrs]


def best_trial(study: Any, cfg: TuneConfig) -> Any:
    trials = completed(study)
    if not trials:
        raise HotExpertsError("no trial completed: every configuration was infeasible for this VRAM budget")
    return max(trials, key=lambda t: (t.values[0], -t.number))


def belady_bound(ev: Evaluator, cand: Candidate) -> Any:
    """The offline optimum at the same VRAM: Belady with the winner's slots (or the same slot bytes)."""
    slots = ev.slots_of(cand)
    if cand.policy == "layer-offload":
        k = int(min(ev.model.n_expert, float((slots * ev.expert_bytes).sum()) // max(1.0, ev.expert_bytes.sum())))
        slots = np.full(ev.model.n_moe_layers, k, np.int64)
    bypass = int(cand.params.get("pp_bypass", 0)) if cand.policy == "fork" else 0
    c = Candidate("belady", {"pp_bypass": bypass}, [int(x) for x in slots], mode=cand.mode)
    return ev.evaluate(c)


def fork_grid(ev: Evaluator, ks: Sequence[int], intervals: Sequence[int], *, pp_bypass: int = 64) -> np.ndarray:
    """Predicted objective of the fork over a K x interval grid (NaN where it does not fit)."""
    out = np.full((len(ks), len(intervals)), np.nan)
    for i, k in enumerate(ks):
        for j, iv in enumerate(intervals):
            c = Candidate("fork", {"interval": int(iv), "pp_bypass": pp_bypass}, [int(k)] * ev.model.n_moe_layers,
                          target="fork" if any(t.name == "fork" for t in ev.targets) else "lab")
            if ev.fits(c)[0]:
                out[i, j] = ev.objective(ev.evaluate(c))
    return out


def replace_trials(cfg: TuneConfig, trials: int) -> TuneConfig:
    return replace(cfg, trials=int(trials))


def summarize(res: Any, ev: Evaluator, cand: Candidate) -> dict[str, Any]:
    vb = ev.vram_of(cand)
    return {
        "policy": cand.policy,
        "target": cand.target,
        "knobs": dict(cand.knobs),
        "label": res.label,
        "params": res.params if cand.policy != "static" else {
            **{k: v for k, v in res.params.items() if k != "counts"},
            "counts": "decode_union profile of the trace before the second half of its decode tokens"},
        "mode": cand.mode,
        "alloc": cand.alloc,
        "slots_per_layer": [int(x) for x in ev.slots_of(cand)],
        "decode_tok_s": res.decode_tok_s,
        "prefill_tok_s": res.prefill_tok_s,
        "objective": ev.objective(res),
        "hit_rate": res.hit_rate,
        "hit_rate_per_layer": res.hit_rate_per_layer,
        "upload_bytes": res.upload_bytes,
        "vram_bytes": float(vb["total"]),
        "vram_gib": float(vb["total"]) / GiB,
        "fits": bool(vb["fits"]),
        "vram_breakdown": {k: v for k, v in vb.items() if isinstance(v, (int, float, bool, str))},
    }


def pct(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return 100.0 * (a / b - 1.0)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


# ----------------------------------------------------------------------------- held out
def split_by_request(trace: Trace, share: float, seed: int = 0) -> tuple[Trace, Trace]:
    """(training, held-out): a random share of the requests (at least one, not all) held out, by request id."""
    reqs = np.unique(trace.request)
    if reqs.size < 2:
        raise InputError(None, f"--holdout needs a trace of two or more requests; this one has {reqs.size}")
    perm = np.random.default_rng(seed).permutation(reqs)
    n_eval = min(reqs.size - 1, max(1, int(round(share * reqs.size))))
    held = np.isin(trace.request, perm[:n_eval])
    return trace.select(~held), trace.select(held)


def per_request_decode(res: Any, trace: Trace) -> dict[int, float]:
    """Decode tok/s of each request of ``trace`` in a simulated result (its steps' predicted times)."""
    cb = res.cost
    b = trace.step_bounds()
    req = trace.request[b[:-1]]
    dec = np.asarray(cb.step_phase) == 1
    out: dict[int, float] = {}
    for r in np.unique(req[dec]):
        m = dec & (req == r)
        sec = float(np.asarray(cb.total)[m].sum())
        tok = float(np.asarray(cb.step_tokens)[m].sum())
        if sec > 0:
            out[int(r)] = tok / sec
    return out


def _spread(v: list[float]) -> dict[str, float | int]:
    a = np.asarray(v, np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "min": float(a.min()), "p10": float(np.percentile(a, 10)),
            "median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "max": float(a.max())}


def heldout_evaluation(ev: Evaluator, eval_trace: Trace, cands: dict[str, Candidate],
                       train: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Predicted tok/s of ``cands`` on requests the study never saw, beside their training predictions.

    Static hot sets are the ones learned on the training trace (the profile written to the run files).
    Returns ``{"trace", "requests", "decode_tokens", "rows": {name: {label, train_decode_tok_s,
    heldout_decode_tok_s, gap_pct, heldout_prefill_tok_s, heldout_hit_rate, per_request}}}``.
    """
    hev = Evaluator(eval_trace, ev.model, ev.hw, ev.cfg)
    hev._profile = ev.profile()
    hev._static_counts = ev.static_counts()
    rows: dict[str, Any] = {}
    for name, c in cands.items():
        res = hev.evaluate(c, keep_arrays=True)
        tr = train[name]
        rows[name] = {
            "label": res.label,
            "train_decode_tok_s": tr.get("decode_tok_s"),
            "heldout_decode_tok_s": res.decode_tok_s,
            "gap_pct": pct(res.decode_tok_s, tr.get("decode_tok_s")),
            "heldout_prefill_tok_s": res.prefill_tok_s,
            "heldout_hit_rate": res.hit_rate,
            "per_request": _spread(list(per_request_decode(res, hev.trace).values())),
        }
    return {"trace": source, "requests": eval_trace.n_requests, "decode_tokens": eval_trace.n_decode_tokens,
            "rows": rows}
