"""``turboquant``: sirxsniper/llama-cpp-turboquant's expert caches.

Read from that fork's ``src/llama-moecache.cpp`` (commit 0359e09: ``llama_moe_hot_init``,
``hot_read_profile``, ``hot_adapt_init``/``hot_adapt_step``/``hot_adapt_decay``, ``llama_moe_cache_init``),
``src/llama-moe-decay.h`` and ``src/llama-fn-auto.cpp`` (``llama_fn_even_slots``):

- **LRU** (``--moe-expert-cache N``): as upstream PR #27861 (``hotexperts.studies.targets.upstream_lru``);
  ignored when a hot set is configured.
- **Profile hot set** (``LLAMA_MOE_HOT_PROFILE=<file.moeprof>``, ``LLAMA_MOE_HOT_MIB=<MiB for all layers>``):
  the budget is ``int(atof(MIB) * 1048576)`` bytes; every (layer, expert) whose count in the profile
  section (``LLAMA_MOE_HOT_SECTION``, default ``decode_union``, falling back to ``decode_union``,
  ``decode_tokens``, ``prefill_tokens``) is above 0 is worth ``count x cost(layer)``
  (``LLAMA_MOE_HOT_COST``, ``type=f,...``, default ``q5_1=1.3``, other types 1.0, a layer's cost the
  byte-weighted mean over gate/up/down); candidates are stable-sorted by worth (ties: layer, then expert
  id) and taken greedily, skipping any that does not fit the remaining budget (:func:`profile_allocation`).
  A layer's slots = its experts taken; each layer with slots also holds one zero slot (not charged to the
  budget). Without ``LLAMA_MOE_HOT_ADAPT`` the set never changes (family ``static``).
- **Adaptive** (``LLAMA_MOE_HOT_ADAPT=1``): the per-layer slot counts stay fixed and their contents change:
  ``LLAMA_MOE_HOT_DECAY`` in (0, 1) selects decayed counts (family ``decay``), else windowed admission
  (family ``window``). ``LLAMA_MOE_HOT_PROFILE=even`` gives every layer the same
  ``min(n_expert, floor(budget / sum of one expert's bytes over layers) - 1)`` slots, starting empty
  (:func:`even_slots`); with a profile file the slot counts come from the profile allocation and the set
  starts from the profile's hot set.
- Graphs of more than ``LLAMA_MOE_HOT_MAX_T`` tokens (default 8) run the plain path.

An adaptive set with a profile file starts from the profile's hot set (the allocation above, ids loaded in
ascending order, each resident's decay count at ``ADMIT``); hotexperts writes either form.

Not priced (a one-line error): ``LLAMA_MOE_HOT_MIB=auto`` (depends on the free VRAM at load time),
``LLAMA_MOE_HOT_POOL``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hotexperts.errors import InputError
from hotexperts.studies.targets._base import (
    ReadContext,
    RunFiles,
    Target,
    WriteContext,
    common_args,
    common_env,
    env_file_text,
    host_layers_or_error,
)
from hotexperts.studies.targets._llama import Flag, Invocation
from hotexperts.studies.targets.upstream_lru import (
    LRU_FLAGS,
    lru_read,
    lru_suggest,
    lru_vram_extra,
    lru_write,
)

__all__ = ["TurboquantTarget", "profile_allocation", "even_slots", "layer_costs", "mib_bytes", "DEFAULT_COST"]

#: LLAMA_MOE_HOT_COST's built-in entry
DEFAULT_COST = {"q5_1": 1.3}
MAX_T_DEFAULT = 8
PROFILE_NAME = "hotexperts.moeprof"
_V = "LLAMA_MOE_HOT_"
_READ_VARS = tuple(_V + x for x in (
    "PROFILE", "MIB", "SECTION", "COST", "ADAPT", "ADMIT", "HYST", "ADAPT_MIB", "DECAY", "DECAY_EVERY",
    "DECAY_ADMIT", "DECAY_RATIO", "DECAY_HYST", "DECAY_MIB", "SEED", "MAX_T", "POOL", "FIT",
))
_IGNORED = tuple(_V + x for x in ("STATS", "VERIFY", "SAVE", "SAVE_EVERY", "HEADROOM_MIB", "CAP_MIB"))
_OFF = ("", "off", "0", "none")


def mib_bytes(mib: str) -> int:
    """``LLAMA_MOE_HOT_MIB`` as the fork reads it: ``(size_t)(max(0, atof(v)) * 1048576.0)``."""
    return int(max(0.0, float(mib)) * 1048576.0)


def mib_text(nbytes: float) -> str:
    """A MiB value whose reading (:func:`mib_bytes`) is within a byte of ``nbytes``."""
    return f"{max(0.0, nbytes) / 1048576.0:.6f}"


def profile_allocation(counts: np.ndarray, layer_bytes: np.ndarray, layer_cost: np.ndarray, budget: int) -> np.ndarray:
    """Slots per layer the fork takes from profile ``counts`` (``(n_layers, n_expert)``) under ``budget``.

    Candidates (layer, expert) with count > 0, worth ``count x layer_cost``; stable sort by worth
    descending (ties keep layer order, then expert id); greedy, skipping candidates that do not fit.
    """
    c = np.asarray(counts, np.float64)
    n_layers, n_expert = c.shape
    worth = (c * np.asarray(layer_cost, np.float64)[:, None]).reshape(-1)
    keep = np.flatnonzero(c.reshape(-1) > 0)
    order = keep[np.argsort(-worth[keep], kind="stable")]
    b = np.asarray(layer_bytes, np.int64)
    slots = np.zeros(n_layers, np.int64)
    left = int(budget)
    smallest = int(b.min()) if b.size else 0
    for flat in order:
        if left < smallest:
            break
        ly = int(flat // n_expert)
        if b[ly] <= left:
            slots[ly] += 1
            left -= int(b[ly])
    return slots


def even_slots(layer_bytes: np.ndarray, budget: int, n_expert: int) -> int:
    """``llama_fn_even_slots``: the same slot count for every layer, one row kept for the zero slot."""
    total = int(np.sum(np.asarray(layer_bytes, np.int64)))
    rows = int(budget) // total if total > 0 else 0
    return min(int(n_expert), rows - 1) if rows > 1 else 0


def _ggml_name(t: str) -> str:
    s = t.lower()
    return s[:-2] + "_K" if s.endswith("_k") else s


def _bytes_per_element(t: str) -> float:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        q = GGMLQuantizationType[t.upper()]
    except KeyError:
        return 1.0
    block, size = GGML_QUANT_SIZES[q]
    return size / block


def parse_cost(text: str | None, origin: Any = None) -> dict[str, float]:
    """``LLAMA_MOE_HOT_COST`` (``type=f,...``) over the built-in map."""
    out = dict(DEFAULT_COST)
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        k, eq, v = item.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise InputError(origin, f"{_V}COST: expected type=number items, got {item!r}") from None
        if not eq:
            raise InputError(origin, f"{_V}COST: expected type=number items, got {item!r}")
    return out


def layer_costs(model: Any, cost: dict[str, float] | None = None) -> np.ndarray:
    """Per MoE layer, the byte-weighted mean cost of its gate/up/down expert tensor types."""
    cmap = DEFAULT_COST if cost is None else cost
    out = np.ones(model.n_moe_layers)
    if not model.expert_types:
        return out
    for i, types in enumerate(model.expert_types):
        if not types:
            continue
        w = np.array([_bytes_per_element(t) for t in types.values()])
        c = np.array([cmap.get(_ggml_name(t), 1.0) for t in types.values()])
        out[i] = float((w * c).sum() / w.sum()) if w.sum() > 0 else 1.0
    return out


class TurboquantTarget(Target):
    name: ClassVar[str] = "turboquant"
    title: ClassVar[str] = "sirxsniper/llama-cpp-turboquant expert cache"
    families: ClassVar[tuple[str, ...]] = ("lru", "static", "window", "decay")
    flags: ClassVar[tuple[Flag, ...]] = LRU_FLAGS
    env_vars: ClassVar[tuple[str, ...]] = _READ_VARS + _IGNORED
    file_names: ClassVar[tuple[str, ...]] = ("turboquant.env", PROFILE_NAME)

    # ---------------------------------------------------------------------------- study
    def suggest(self, trial: Any, ev: Any, family: str) -> Any:
        from hotexperts.studies.tune import Candidate

        model = ev.model
        eb = np.asarray(model.expert_bytes, np.int64)
        if family == "lru":
            return lru_suggest(trial, ev, self.name)
        if family == "static":
            fill = trial.suggest_float("fill", 0.05, 1.0)
            mib = mib_text(fill * max(0.0, ev.free_bytes))
            alloc = profile_allocation(ev.static_counts(), eb, layer_costs(model), mib_bytes(mib))
            return Candidate("static", {"max_tokens": MAX_T_DEFAULT}, [int(x) for x in alloc], target=self.name,
                             alloc="profile", knobs={"mib": mib, "section": "decode_union"})
        # window / decay: seeded from the profile we ship (the fork's allocation over it), or `even`: the same
        # K in every layer, starting empty, written so that the even rule yields the sampled K
        seed = trial.suggest_categorical(f"{family}.seed", ["even", "profile"])
        knobs: dict[str, Any]
        slots: list[int]
        if seed == "profile":
            fill = trial.suggest_float("fill", 0.05, 1.0)
            mib = mib_text(fill * max(0.0, ev.free_bytes))
            slots = [int(x) for x in profile_allocation(ev.static_counts(), eb, layer_costs(model), mib_bytes(mib))]
            knobs = {"mib": mib, "profile": "file", "section": "decode_union"}
        else:
            k = trial.suggest_int("hot_k", 1, max(1, ev.kmax))
            mib = mib_text((k + 1.5) * float(eb.sum()))
            slots = [even_slots(eb, mib_bytes(mib), model.n_expert)] * model.n_moe_layers
            knobs = {"mib": mib, "profile": "even"}
        params: dict[str, Any] = {"observe_max_tokens": MAX_T_DEFAULT, "max_tokens": MAX_T_DEFAULT}
        if family == "window":
            w = trial.suggest_int("window.window", 4, 64, log=True)
            params["window"] = w
            params["min_sightings"] = trial.suggest_int("window.min_sightings", 1, max(1, min(8, w)))
            params["hyst"] = trial.suggest_int("window.hyst", 0, 4)
            params["cap_bytes"] = trial.suggest_categorical("window.cap_mib", [16, 32, 64, 128, 256, 1024]) << 20
        else:
            params["decay"] = trial.suggest_float("decay.decay", 0.7, 0.99)
            params["pass_interval"] = trial.suggest_int("decay.pass_interval", 1, 8)
            params["admit"] = trial.suggest_float("decay.admit", 0.5, 4.0)
            params["ratio"] = trial.suggest_float("decay.ratio", 1.0, 2.0)
            params["margin"] = trial.suggest_float("decay.margin", 0.0, 2.0)
            params["prompt_weight"] = trial.suggest_float("decay.prompt_weight", 0.0, 0.2)
            params["cap_bytes"] = trial.suggest_categorical("decay.cap_mib", [32, 64, 128, 256, 1024]) << 20
        return Candidate(family, params, slots, target=self.name, knobs=knobs,
                         alloc="profile" if seed == "profile" else "uniform")

    def vram_extra(self, cand: Any, model: Any) -> float:
        if cand.policy == "lru":
            return lru_vram_extra(cand, model)
        if cand.policy not in ("static", "window", "decay"):
            return 0.0
        # one zero slot and the id tables of every layer that has slots
        return float(sum(b + 8 * model.n_expert for s, b in zip(cand.slots, model.expert_bytes) if int(s) > 0))

    # ---------------------------------------------------------------------------- write
    def write(self, cand: Any, ctx: WriteContext) -> RunFiles:
        if cand.policy == "lru":
            return lru_write(cand, ctx, self.title, "turboquant.env")
        files: dict[str, str] = {}
        env: dict[str, str] = {"LLAMA_ARG_OVERRIDE_TENSOR": "exps=CPU"}
        if cand.policy == "static":
            if ctx.evaluator is None:
                raise ValueError("writing a static hot set needs the evaluator's profile")
            from hotexperts.tracer.profile import moeprof_text

            files[PROFILE_NAME] = moeprof_text(ctx.evaluator.profile())
            env[_V + "PROFILE"] = PROFILE_NAME
            env[_V + "MIB"] = str(cand.knobs["mib"])
            env[_V + "SECTION"] = str(cand.knobs.get("section", "decode_union"))
        else:
            p = cand.params
            if cand.knobs.get("profile") == "file":
                if ctx.evaluator is None:
                    raise ValueError("writing a profile-seeded hot set needs the evaluator's profile")
                from hotexperts.tracer.profile import moeprof_text

                files[PROFILE_NAME] = moeprof_text(ctx.evaluator.profile())
                env[_V + "PROFILE"] = PROFILE_NAME
                env[_V + "SECTION"] = str(cand.knobs.get("section", "decode_union"))
            else:
                env[_V + "PROFILE"] = "even"
            env[_V + "MIB"] = str(cand.knobs["mib"])
            env[_V + "ADAPT"] = "1"
            if cand.policy == "window":
                env[_V + "ADMIT"] = f"{int(p['min_sightings'])}/{int(p['window'])}"
                env[_V + "HYST"] = str(int(p["hyst"]))
                env[_V + "ADAPT_MIB"] = str(max(1, int(p["cap_bytes"]) >> 20))
            else:
                env[_V + "DECAY"] = repr(float(p["decay"]))
                env[_V + "DECAY_EVERY"] = str(int(p["pass_interval"]))
                env[_V + "DECAY_ADMIT"] = repr(float(p["admit"]))
                env[_V + "DECAY_RATIO"] = repr(float(p["ratio"]))
                env[_V + "DECAY_HYST"] = repr(float(p["margin"]))
                env[_V + "DECAY_MIB"] = str(max(1, int(p["cap_bytes"]) >> 20))
                env[_V + "SEED"] = repr(float(p["prompt_weight"]))
        env.update(common_env(ctx))
        files["turboquant.env"] = env_file_text(self.title, env)
        return RunFiles(files=files, env_file="turboquant.env", argv=common_args(ctx), env=env)

    # ---------------------------------------------------------------------------- read
    def claims(self, inv: Invocation) -> bool:
        return any(inv.has(v) for v in _READ_VARS + _IGNORED)

    def read(self, inv: Invocation, ctx: ReadContext) -> Any:
        from hotexperts.studies.targets.mainline import MainlineTarget
        from hotexperts.studies.tune import Candidate

        model = ctx.model
        eb = np.asarray(model.expert_bytes, np.int64)
        prof = str(inv.get(_V + "PROFILE", "")).strip()
        if prof.lower() in _OFF:
            if inv.has("moe_expert_cache"):
                return lru_read(inv, ctx, self.name)
            return MainlineTarget().read(inv, ctx)
        for var in (_V + "POOL",):
            if str(inv.get(var, "0")).strip() not in _OFF:
                raise InputError(inv.origin, f"{var}: pooled slots are not priced")
        adapt = _int(inv, _V + "ADAPT", 0) != 0
        mib = str(inv.get(_V + "MIB", "0")).strip()
        if mib.lower() == "auto":
            raise InputError(inv.origin, f"{_V}MIB=auto sizes the hot set from the free VRAM at load time, which is not "
                                         "priced: give the MiB as a number")
        try:
            budget = mib_bytes(mib)
        except ValueError:
            raise InputError(inv.origin, f"{_V}MIB expects a number of MiB, got {mib!r}") from None
        max_t = min(8, max(1, _int(inv, _V + "MAX_T", MAX_T_DEFAULT)))
        if prof.lower() == "even" and not adapt:
            return MainlineTarget().read(inv, ctx)  # NOTE: `even` without ADAPT turns the hot set off
        host_layers_or_error(inv, model, "the hot set")
        if budget <= 0:
            return MainlineTarget().read(inv, ctx)
        knobs: dict[str, Any] = {"mib": mib}
        if prof.lower() == "even":
            n = even_slots(eb, budget, model.n_expert)
            slots = [n] * model.n_moe_layers
            knobs["profile"] = "even"
            counts = None
        else:
            counts, section = self._profile_counts(inv, ctx, prof)
            cost = parse_cost(inv.get(_V + "COST"), inv.origin)
            slots = [int(x) for x in profile_allocation(counts, eb, layer_costs(model, cost), budget)]
            knobs["section"] = section
            knobs["profile"] = "file"
        if not adapt:
            return Candidate("static", {"max_tokens": max_t}, slots, target=self.name, alloc="profile", knobs=knobs,
                             counts=counts)
        params: dict[str, Any] = {"observe_max_tokens": max_t, "max_tokens": max_t}
        decay = _float(inv, _V + "DECAY", 0.0)
        adapt_mib = _int(inv, _V + "ADAPT_MIB", 64)
        adapt_mib = adapt_mib if adapt_mib >= 1 else 64
        if 0.0 < decay < 1.0:
            every = max(1, _int(inv, _V + "DECAY_EVERY", 2))
            dmib = _int(inv, _V + "DECAY_MIB", 0)
            params.update(
                decay=decay, pass_interval=every, admit=max(0.0, _float(inv, _V + "DECAY_ADMIT", 2.0)),
                ratio=max(1.0, _float(inv, _V + "DECAY_RATIO", 1.2)), margin=max(0.0, _float(inv, _V + "DECAY_HYST", 0.5)),
                prompt_weight=max(0.0, _float(inv, _V + "SEED", 0.03)),
                cap_bytes=(dmib if dmib >= 1 else adapt_mib * every) << 20,
            )
            return Candidate("decay", params, slots, target=self.name, knobs=knobs, counts=counts,
                             alloc="profile" if counts is not None else "uniform")
        n_w = _admit(str(inv.get(_V + "ADMIT", "3/16")))
        hyst = _int(inv, _V + "HYST", 1)
        params.update(min_sightings=n_w[0], window=n_w[1], hyst=hyst if hyst >= 0 else 1, cap_bytes=adapt_mib << 20)
        return Candidate("window", params, slots, target=self.name, knobs=knobs, counts=counts,
                         alloc="profile" if counts is not None else "uniform")

    def _profile_counts(self, inv: Invocation, ctx: ReadContext, prof: str) -> tuple[np.ndarray, str]:
        from hotexperts.tracer.profile import load_moeprof

        model = ctx.model
        path = Path(prof)
        path = path if path.is_absolute() else ctx.cwd / path
        p = load_moeprof(path)
        if p.n_expert != model.n_expert:
            raise InputError(path, f"profile has {p.n_expert} experts per layer, model {model.name} has {model.n_expert}")
        missing = [il for il in model.moe_layers if il not in p.layers]
        if missing:
            raise InputError(path, f"profile has no rows for MoE layers {missing[:6]} (the fork gives them no hot set; "
                                   "not priced)")
        want = str(inv.get(_V + "SECTION", "decode_union")).strip() or "decode_union"
        for name in (want, "decode_union", "decode_tokens", "prefill_tokens"):
            tab = p.sections.get(name)
            if tab is not None and bool(np.any(np.asarray(tab)[list(model.moe_layers)] > 0)):
                return np.asarray(tab, np.float64)[list(model.moe_layers)], name
        raise InputError(path, f"profile has no counts in section {want} nor in the fallback sections")


def _int(inv: Invocation, var: str, default: int) -> int:
    raw = inv.get(var)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise InputError(inv.origin, f"{var} expects an integer, got {raw!r}") from None


def _float(inv: Invocation, var: str, default: float) -> float:
    raw = inv.get(var)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        v = float(str(raw).strip())
    except ValueError:
        raise InputError(inv.origin, f"{var} expects a number, got {raw!r}") from None
    if not math.isfinite(v):
        raise InputError(inv.origin, f"{var} must be finite, got {raw!r}")
    return v


def _admit(text: str) -> tuple[int, int]:
    """``N/W`` as the fork accepts it (1 <= N <= W <= 256), else its default 3/16."""
    try:
        n_s, w_s = text.split("/")
        n, w = int(n_s), int(w_s)
    except ValueError:
        return 3, 16
    return (n, w) if 1 <= n <= w <= 256 else (3, 16)
