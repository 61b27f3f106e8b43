"""Synthetic routing traces whose statistics are fitted to real ones.

The generator ("drifting-popularity copy model", described with its equations in
``docs/synthetic-traces.md``) draws, per MoE layer and token, ``top_k`` distinct experts. Each pick
either *copies* an expert that a recent token of the same request used (distance ``d`` drawn from a
power-law kernel ``q(d) ~ d^-gamma``: temporal locality, next-token reuse) or draws from a
*popularity* vector (skew): a Zipf head with a steeper tail beyond a knee rank, the ranking made of
a static part and a part redrawn at each request start (request boundaries shift the hot set), plus
an AR(1) log-popularity drift (popularity drift over time). The copy probability
has its own value for prefill and decode tokens and moves with a latent per-token state shared by all
layers (inter-layer correlation). It is a Simon/Yule-style copying process (H. A. Simon, "On a class
of skew distribution functions", Biometrika 1955) mixed with a Zipf popularity, chosen because
its reuse-distance distribution is set directly by the kernel and it samples in O(top_k) per
(token, layer).

* :func:`fit_synth` fits :class:`SynthParams` to a trace by simulated moments: per layer it matches
  the decode reuse-distance histogram, the prefill next-token reuse, the share of the 8 and 32
  most-selected experts and the overlap of the first and second half's hot sets, by coordinate
  search with common random numbers; then one global parameter for the inter-layer correlation.
* :func:`sample_synth` samples a :class:`~hotexperts.tracer.trace.Trace` of any length, shape and
  request structure, deterministic for a seed (the kernel is in ``hotexperts.sim._synth_kernels``).
* :func:`builtin_params` / :func:`params_for_model` give the embedded fitted parameters
  (``synth_params/*.json``, made by ``benchmarks/fit_synth_defaults.py``) for a model shape.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts.errors import InputError
from hotexperts.tracer.trace import PHASE_DECODE, PHASE_PREFILL, Trace, expert_dtype

__all__ = [
    "LayerSynthParams",
    "SynthParams",
    "SynthFitWarning",
    "MIN_DECODE_TOKENS",
    "MIN_DECODE_TOKENS_DRIFT",
    "MIN_PREFILL_TOKENS",
    "fit_synth",
    "sample_synth",
    "synth_layout",
    "builtin_params",
    "builtin_names",
    "params_for_model",
    "trace_summary",
]

# Fit thresholds. A decode reuse-distance histogram with bins up to 64 tokens needs a few times 64
# decode tokens; below MIN_DECODE_TOKENS fit_synth refuses. Drift (hot set of the first half vs the
# second half) needs two halves long enough to have a hot set of 32: below MIN_DECODE_TOKENS_DRIFT the
# drift is not fitted (default kept, with a warning). Prefill copy probability below
# MIN_PREFILL_TOKENS prefill tokens: taken from decode, with a warning.
MIN_DECODE_TOKENS = 64
MIN_DECODE_TOKENS_DRIFT = 128
MIN_PREFILL_TOKENS = 32
# decode tokens below which the fitted parameters are usable but noisy (a warning)
NOISY_DECODE_TOKENS = 200

MAX_DISTANCE = 256  # copy kernel support, tokens
DRIFT_EVERY = 32  # tokens between drift updates
DEFAULT_DRIFT_TAU = 256.0  # drift correlation time, tokens
DEFAULT_REQUEST_SHARE = 0.9  # share of the popularity ranking redrawn at a request start
_PARAMS_DIR = "synth_params"


class SynthFitWarning(UserWarning):
    """A parameter could not be fitted reliably from the trace; a default or a fallback was used."""


@dataclass(frozen=True)
class LayerSynthParams:
    """Generator parameters of one MoE layer.

    Attributes:
        copy_next_decode: probability that a decode pick copies an expert of the previous token
            (at latent state 0).
        copy_next_prefill: the same for prefill (prompt) tokens.
        copy_far: probability that a pick copies an expert of token ``t - d``, ``d >= 2``.
        dist_exponent: ``gamma`` of that distance kernel ``q(d) ~ d^-gamma``, ``d = 2..256``.
        zipf_exponent: popularity skew: the expert of popularity rank ``r`` has weight ``r^-s``.
        sigma_drift: stationary standard deviation of the drifting part of the log-popularity.
        tail_exponent: extra decay of the popularity beyond rank ``tail_knee``: the weight of rank
            ``r > tail_knee`` is ``r^-s * (r / tail_knee)^-tail_exponent`` (a hot core and a steeper
            tail; 0 = a plain Zipf profile, the version-1 model).
        tail_knee: the rank where the tail starts (>= 1).
    """

    copy_next_decode: float
    copy_next_prefill: float
    copy_far: float
    dist_exponent: float
    zipf_exponent: float
    sigma_drift: float
    tail_exponent: float = 0.0
    tail_knee: float = 32.0


@dataclass(frozen=True)
class SynthParams:
    """Fitted generator parameters for one model shape (JSON-serialisable).

    ``layers[i]`` belongs to relative depth ``depth[i]`` (0 = first MoE layer, 1 = last); sampling
    for a different layer count interpolates by relative depth (see :meth:`for_layers`).
    """

    n_expert: int
    top_k: int
    layers: tuple[LayerSynthParams, ...]
    depth: tuple[float, ...]
    sigma_z: float = 0.0
    request_share: float = DEFAULT_REQUEST_SHARE
    drift_tau: float = DEFAULT_DRIFT_TAU
    drift_every: int = DRIFT_EVERY
    max_distance: int = MAX_DISTANCE
    name: str = "fitted"
    source: str = ""
    notes: tuple[str, ...] = ()
    quality: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------ (de)serialise
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = [asdict(x) for x in self.layers]
        d["depth"] = list(self.depth)
        d["notes"] = list(self.notes)
        d["format"] = "hotexperts-synth-params"
        d["version"] = 2
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, path: str | os.PathLike[str] | None = None) -> SynthParams:
        src = path if path is not None else "<synth params>"
        try:
            if d.get("format") != "hotexperts-synth-params":
                raise InputError(src, "not a hotexperts synthetic-trace parameter file")
            layers = tuple(LayerSynthParams(**{k: float(v) for k, v in x.items()}) for x in d["layers"])
            p = cls(
                n_expert=int(d["n_expert"]),
                top_k=int(d["top_k"]),
                layers=layers,
                depth=tuple(float(x) for x in d["depth"]),
                sigma_z=float(d.get("sigma_z", 0.0)),
                request_share=float(d.get("request_share", DEFAULT_REQUEST_SHARE)),
                drift_tau=float(d.get("drift_tau", DEFAULT_DRIFT_TAU)),
                drift_every=int(d.get("drift_every", DRIFT_EVERY)),
                max_distance=int(d.get("max_distance", MAX_DISTANCE)),
                name=str(d.get("name", "fitted")),
                source=str(d.get("source", "")),
                notes=tuple(str(x) for x in d.get("notes", ())),
                quality=dict(d.get("quality") or {}),
            )
        except InputError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(src, f"bad synthetic-trace parameters ({type(exc).__name__}: {exc})") from None
        p.check(src)
        return p

    def save(self, path: str | os.PathLike[str]) -> None:
        from hotexperts._atomic import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SynthParams:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(path, f"cannot read synthetic-trace parameters: {exc}") from None
        if not isinstance(d, dict):
            raise InputError(path, "expected a JSON object")
        return cls.from_dict(d, path=path)

    def check(self, src: str | os.PathLike[str] = "<synth params>") -> None:
        if self.n_expert < 2 or self.top_k < 1 or self.top_k > self.n_expert:
            raise InputError(src, f"impossible shape: n_expert={self.n_expert}, top_k={self.top_k}")
        if not self.layers or len(self.depth) != len(self.layers):
            raise InputError(src, f"{len(self.layers)} layer parameter sets for {len(self.depth)} depths")
        for i, x in enumerate(self.layers):
            for name, v in asdict(x).items():
                if not math.isfinite(v) or v < 0 or (name.startswith("copy") and v >= 1):
                    raise InputError(src, f"layer {i}: {name}={v} out of range")
            if x.tail_knee < 1:
                raise InputError(src, f"layer {i}: tail_knee={x.tail_knee} out of range (>= 1)")
            if x.copy_next_decode + x.copy_far >= 1 or x.copy_next_prefill + x.copy_far >= 1:
                raise InputError(src, f"layer {i}: copy probabilities sum to 1 or more (copy_far={x.copy_far})")
        if not (0 <= self.request_share <= 1) or self.drift_tau <= 0 or self.drift_every < 1:
            raise InputError(src, "request_share, drift_tau or drift_every out of range")

    # ------------------------------------------------------------- reshaping
    def for_shape(
        self, *, n_layers: int | None = None, n_expert: int | None = None, top_k: int | None = None
    ) -> SynthParams:
        """These parameters mapped onto another shape.

        Layers: each target layer takes the parameters interpolated linearly at its relative depth.
        Experts / top-k: the per-pick probabilities and the log-popularity spread are kept; the note
        list records that the shape was scaled (a fitted family for that shape would be better).
        """
        p = self
        notes = list(self.notes)
        if n_layers is not None and n_layers != self.n_layers:
            if n_layers < 1:
                raise InputError(None, f"n_layers must be positive, got {n_layers}")
            p = p.for_layers(n_layers)
            notes = list(p.notes)
        ne = self.n_expert if n_expert is None else int(n_expert)
        k = self.top_k if top_k is None else int(top_k)
        if k < 1 or ne < 2 or k > ne:
            raise InputError(None, f"impossible shape: n_expert={ne}, top_k={k}")
        if (ne, k) != (self.n_expert, self.top_k):
            notes.append(
                f"scaled from parameters fitted for n_expert={self.n_expert}, top_k={self.top_k} "
                f"to n_expert={ne}, top_k={k}: per-pick copy probabilities, distance kernel and "
                "log-popularity spread kept as fitted"
            )
        return replace(p, n_expert=ne, top_k=k, notes=tuple(notes))

    def for_layers(self, n_layers: int) -> SynthParams:
        """Parameters for ``n_layers`` layers, interpolated by relative depth."""
        if n_layers == self.n_layers:
            return self
        src = np.asarray(self.depth, float)
        dst = np.linspace(0.0, 1.0, n_layers) if n_layers > 1 else np.array([0.5])
        names = list(asdict(self.layers[0]))
        table = np.array([[getattr(x, n) for n in names] for x in self.layers], float)
        new = np.stack([np.interp(dst, src, table[:, j]) for j in range(len(names))], axis=1)
        layers = tuple(LayerSynthParams(**dict(zip(names, (float(v) for v in row)))) for row in new)
        note = f"{self.n_layers} fitted layer parameter sets mapped onto {n_layers} layers by relative depth"
        return replace(self, layers=layers, depth=tuple(float(x) for x in dst), notes=(*self.notes, note))

    # --------------------------------------------------------- kernel arrays
    def _arrays(self, max_distance: int | None = None) -> dict[str, np.ndarray]:
        D = self.max_distance if max_distance is None else max_distance
        lay = self.layers
        d = np.arange(2, D + 1, dtype=float)
        cdf = np.empty((len(lay), D - 1))
        for i, x in enumerate(lay):
            q = d ** (-x.dist_exponent)
            cdf[i] = np.cumsum(q) / q.sum()
        cdf[:, -1] = 1.0
        rho = math.exp(-self.drift_every / self.drift_tau)
        return {
            "logit_next_dec": _logit(np.array([x.copy_next_decode for x in lay])),
            "logit_next_pre": _logit(np.array([x.copy_next_prefill for x in lay])),
            "copy_far": np.array([x.copy_far for x in lay]),
            "dist_cdf": cdf,
            "zipf_exponent": np.array([x.zipf_exponent for x in lay]),
            "tail_exponent": np.array([x.tail_exponent for x in lay]),
            "tail_knee": np.array([x.tail_knee for x in lay]),
            "sigma_drift": np.array([x.sigma_drift for x in lay]),
            "rho_drift": np.full(len(lay), rho),
        }


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# ---------------------------------------------------------------------------------- layout
def synth_layout(
    *, n_tokens: int, n_requests: int = 1, prompt_tokens: int = 0, ubatch: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token structure ``(phase, request, ubatch, pos)`` of a synthetic trace.

    Each of ``n_requests`` requests has ``prompt_tokens`` prefill tokens in ubatches of at most
    ``ubatch`` tokens, then its share of the decode tokens (``n_tokens - n_requests*prompt_tokens``,
    split as evenly as possible, earlier requests taking the remainder), one token per step.
    """
    if n_tokens < 1:
        raise InputError(None, f"--tokens must be positive, got {n_tokens}")
    if n_requests < 1:
        raise InputError(None, f"--requests must be positive, got {n_requests}")
    if prompt_tokens < 0:
        raise InputError(None, f"--prompt-tokens must be >= 0, got {prompt_tokens}")
    if ubatch < 1:
        raise InputError(None, f"--ubatch must be positive, got {ubatch}")
    n_dec = n_tokens - n_requests * prompt_tokens
    if n_dec < n_requests:
        raise InputError(
            None,
            f"{n_tokens} tokens cannot hold {n_requests} request(s) of {prompt_tokens} prompt tokens "
            "and at least one decode token each",
        )
    per = np.full(n_requests, n_dec // n_requests, np.int64)
    per[: n_dec % n_requests] += 1
    lens = per + prompt_tokens
    request = np.repeat(np.arange(n_requests, dtype=np.int32), lens)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    pos = (np.arange(n_tokens) - np.repeat(starts, lens)).astype(np.int32)
    phase = np.where(pos < prompt_tokens, PHASE_PREFILL, PHASE_DECODE).astype(np.uint8)
    # step id: prompt tokens grouped by ubatch, decode tokens one per step
    local = np.where(phase == PHASE_PREFILL, pos // ubatch, -(-prompt_tokens // ubatch) + pos - prompt_tokens)
    new_step = np.ones(n_tokens, bool)
    new_step[1:] = (local[1:] != local[:-1]) | (request[1:] != request[:-1])
    ub = (np.cumsum(new_step) - 1).astype(np.int32)
    return phase, request, ub, pos


# ---------------------------------------------------------------------------------- sampling
def _kernels() -> Any:
    from hotexperts.sim import _synth_kernels

    return _synth_kernels


def _run_kernel(
    params: SynthParams,
    phase: np.ndarray,
    new_request: np.ndarray,
    seed: int,
    *,
    arrays: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    kern = _kernels()
    n = phase.shape[0]
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5E17])
    z = rng.standard_normal(n)
    a = params._arrays() if arrays is None else arrays
    out = np.empty((n, params.n_layers, params.top_k), expert_dtype(params.n_expert))
    kern.sample_routing(
        out,
        np.ascontiguousarray(phase, np.uint8),
        np.ascontiguousarray(new_request, np.bool_),
        z,
        a["logit_next_dec"],
        a["logit_next_pre"],
        a["copy_far"],
        a["dist_cdf"],
        a["zipf_exponent"],
        a["tail_exponent"],
        a["tail_knee"],
        float(params.request_share),
        a["sigma_drift"],
        a["rho_drift"],
        int(params.drift_every),
        float(params.sigma_z),
        int(params.n_expert),
        int(seed) & 0xFFFFFFFFFFFF,
    )
    return out


def _new_request(request: np.ndarray) -> np.ndarray:
    m = np.ones(request.shape[0], bool)
    m[1:] = request[1:] != request[:-1]
    return m


def sample_synth(
    params: SynthParams,
    *,
    n_tokens: int,
    n_layers: int | None = None,
    n_expert: int | None = None,
    top_k: int | None = None,
    n_requests: int = 1,
    prompt_tokens: int = 0,
    ubatch: int = 512,
    seed: int = 0,
    layout: Trace | None = None,
    moe_layers: Sequence[int] | None = None,
    meta: dict[str, Any] | None = None,
) -> Trace:
    """Sample a synthetic trace (deterministic for ``seed``).

    Args:
        params: fitted parameters (:func:`fit_synth`, :func:`builtin_params`).
        n_tokens: total tokens (prompt + decode over all requests).
        n_layers, n_expert, top_k: target shape (default: the parameters'); see
            :meth:`SynthParams.for_shape`.
        n_requests, prompt_tokens, ubatch: request structure (:func:`synth_layout`).
        layout: copy the token structure (phase, request, ubatch, position) of this trace instead;
            ``n_tokens``, ``n_requests``, ``prompt_tokens`` and ``ubatch`` are then ignored.
        moe_layers: the model layer index of each trace layer (default ``0..n_layers-1``).
    """
    p = params.for_shape(n_layers=n_layers, n_expert=n_expert, top_k=top_k)
    if layout is not None:
        phase, request, ub, pos = layout.phase, layout.request, layout.ubatch, layout.pos
        if layout.n_tokens == 0:
            raise InputError(None, "the layout trace has no tokens")
    else:
        phase, request, ub, pos = synth_layout(
            n_tokens=n_tokens, n_requests=n_requests, prompt_tokens=prompt_tokens, ubatch=ubatch
        )
    ids = _run_kernel(p, phase, _new_request(request), seed)
    layers = tuple(range(p.n_layers)) if moe_layers is None else tuple(int(x) for x in moe_layers)
    if len(layers) != p.n_layers:
        raise InputError(None, f"{len(layers)} MoE layer ids for {p.n_layers} layers")
    m: dict[str, Any] = dict(meta or {})
    m.setdefault("source", {})
    m["synth"] = {"params": p.name, "params_source": p.source, "seed": int(seed), "notes": list(p.notes)}
    if isinstance(m["source"], dict):
        m["source"] = {**m["source"], "kind": "synthetic", "generator": "hotexperts.tracer.synth"}
    return Trace.from_arrays(
        ids,
        n_expert=p.n_expert,
        phase=phase,
        request=request,
        ubatch=ub,
        pos=pos,
        moe_layers=layers,
        meta=m,
    )


# ---------------------------------------------------------------------------------- statistics
def _layer_stats(ids: np.ndarray, present: np.ndarray, phase: np.ndarray, new_request: np.ndarray, n_expert: int) -> np.ndarray:
    """``(n_layers, N_STATS)`` statistics (see ``layer_stats`` in the kernel module)."""
    kern = _kernels()
    out = np.zeros((ids.shape[1], kern.N_STATS))
    kern.all_layer_stats(
        np.ascontiguousarray(ids),
        np.ascontiguousarray(present, np.bool_),
        np.ascontiguousarray(phase, np.uint8),
        np.ascontiguousarray(new_request, np.bool_),
        int(n_expert),
        out,
    )
    return out


def _present(trace: Trace) -> np.ndarray:
    return np.ones((trace.n_tokens, trace.n_layers), bool) if trace.present is None else trace.present


def _interlayer_corr(ids: np.ndarray, present: np.ndarray, phase: np.ndarray, new_request: np.ndarray) -> float:
    """Mean correlation, over layer pairs, of the per-token next-token reuse count (decode tokens)."""
    rows = ~new_request[1:] & (phase[1:] == PHASE_DECODE)
    if int(rows.sum()) < 16:
        return 0.0
    a, b = ids[1:][rows], ids[:-1][rows]
    reuse = (a[:, :, :, None] == b[:, :, None, :]).any(-1).sum(-1).astype(float)  # (tokens, layers)
    ok = (present[1:] & present[:-1])[rows].all(0) & (reuse.std(0) > 0)
    if int(ok.sum()) < 2:
        return 0.0
    c = np.corrcoef(reuse[:, ok].T)
    iu = np.triu_indices(int(ok.sum()), 1)
    return float(np.mean(c[iu]))


def trace_summary(trace: Trace) -> dict[str, Any]:
    """Per-layer statistics the generator is fitted to, for comparing traces (JSON-serialisable).

    Keys: ``next_token_reuse`` (decode share of picks used by the previous token), ``reuse_within_8``,
    ``far_or_new`` (previous use > 64 tokens back or never), ``top8_share``, ``top32_share``,
    ``drift_overlap`` (top-32 of the first half of decode vs the second half), ``new_expert_share``
    (decode picks of an expert not used before in the request), ``top128_share``,
    ``top8_persistence`` (picks of a 32-token decode window on the previous window's top-8), per
    layer, and ``interlayer_corr``.
    """
    pres = _present(trace)
    nr = _new_request(trace.request)
    st = _layer_stats(trace.experts, pres, trace.phase, nr, trace.n_expert)
    return {
        "next_token_reuse": st[:, 0].tolist(),
        "reuse_within_8": st[:, :4].sum(1).tolist(),
        "far_or_new": st[:, 7].tolist(),
        "prefill_next_token_reuse": st[:, 8].tolist(),
        "top8_share": st[:, 11].tolist(),
        "top32_share": st[:, 12].tolist(),
        "drift_overlap": st[:, 13].tolist(),
        "new_expert_share": st[:, 14].tolist(),
        "top128_share": st[:, 15].tolist(),
        "top8_persistence": st[:, 16].tolist(),
        "interlayer_corr": _interlayer_corr(trace.experts, pres, trace.phase, nr),
    }


# ---------------------------------------------------------------------------------- fitting
# weights of the statistics in the fit loss (decode bins, prefill bins, top-8, top-32, drift, new
# experts, top-128, top-8 persistence).
# NOTE: the new-expert share is about 0.01, so its squared gap is tiny unless weighted up; a surplus
# of never-seen experts late in the decode is what made version 1 miss LRU at 128 slots.
_W = np.array([3.0, 1, 1, 1, 1, 1, 1, 2.0, 1.5, 1, 1, 2.0, 1.0, 0.5, 40.0, 10.0, 3.0])

_GRIDS = {
    "copy_next_decode": np.linspace(0.0, 0.6, 13),
    "copy_next_prefill": np.linspace(0.0, 0.6, 13),
    "copy_far": np.linspace(0.0, 0.8, 9),
    "dist_exponent": np.linspace(0.0, 2.5, 11),
    "zipf_exponent": np.linspace(0.0, 1.6, 17),
    "sigma_drift": np.linspace(0.0, 1.6, 9),
    "tail_exponent": np.linspace(0.0, 6.0, 13),
    "tail_knee": np.linspace(4.0, 8.0, 9),  # searched as log2(knee): ranks 16..256
}
_MAX_COPY = 0.95  # largest next-token + far copy probability the fit may choose
# parameters searched on a log2 scale (the grid above holds log2 values)
_LOG2_PARAMS = frozenset({"tail_knee"})


def fit_synth(
    trace: Trace,
    *,
    n_seeds: int = 3,
    rounds: int = 3,
    fit_prefill: bool | None = None,
    fit_drift: bool | None = None,
    request_share: float | None = None,
    name: str = "fitted",
    source: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> SynthParams:
    """Fit the generator to ``trace`` (simulated method of moments, per layer).

    Raises :class:`InputError` when the trace has fewer than :data:`MIN_DECODE_TOKENS` decode tokens
    (the reuse statistics would be noise). Emits :class:`SynthFitWarning` (and records it in
    ``params.quality["warnings"]``) when a parameter is not identifiable from the trace: drift with
    fewer than :data:`MIN_DECODE_TOKENS_DRIFT` decode tokens, prefill copying with fewer than
    :data:`MIN_PREFILL_TOKENS` prompt tokens, the request share with a single request.

    ``params.quality`` holds the fit's residuals: per layer the real and synthetic statistics and the
    largest absolute gap.
    """
    src = path if path is not None else trace.meta.get("path", "<trace>")
    n_dec = trace.n_decode_tokens
    if n_dec < MIN_DECODE_TOKENS:
        raise InputError(
            src,
            f"only {n_dec} decode tokens: fitting the generator needs at least {MIN_DECODE_TOKENS} "
            "(reuse distances up to 64 tokens); use a longer trace or --model for built-in parameters",
        )
    warns: list[str] = []
    pres = _present(trace)
    nr = _new_request(trace.request)
    n_pre = trace.n_prefill_tokens
    if fit_prefill is None:
        fit_prefill = n_pre >= MIN_PREFILL_TOKENS
        if not fit_prefill:
            warns.append(f"only {n_pre} prefill tokens (< {MIN_PREFILL_TOKENS}): prefill copy probability set to the decode one")
    if fit_drift is None:
        fit_drift = n_dec >= MIN_DECODE_TOKENS_DRIFT
        if not fit_drift:
            warns.append(
                f"only {n_dec} decode tokens (< {MIN_DECODE_TOKENS_DRIFT}): popularity drift not fitted, default kept"
            )
    if n_dec < NOISY_DECODE_TOKENS:
        warns.append(f"only {n_dec} decode tokens (< {NOISY_DECODE_TOKENS}): fitted parameters are noisy")
    if request_share is None:
        request_share = DEFAULT_REQUEST_SHARE
        if trace.n_requests < 2:
            warns.append(
                f"one request: the share of popularity redrawn at a request start is not identifiable, "
                f"default {DEFAULT_REQUEST_SHARE} kept"
            )
    target = _layer_stats(trace.experts, pres, trace.phase, nr, trace.n_expert)
    L = trace.n_layers
    # layers whose prefill tokens were not recorded (llama.cpp's last layer) carry no prefill signal
    pre_mask = trace.phase == PHASE_PREFILL
    has_pre = pres[pre_mask].sum(0) >= MIN_PREFILL_TOKENS if n_pre else np.zeros(L, bool)
    w = np.tile(_W, (L, 1))
    w[~has_pre, 8:11] = 0.0
    if not fit_drift:
        w[:, 13] = 0.0
    cur = {
        "copy_next_decode": np.full(L, 0.3),
        "copy_next_prefill": np.full(L, 0.3),
        "copy_far": np.full(L, 0.3),
        "dist_exponent": np.full(L, 1.0),
        "zipf_exponent": np.full(L, 0.8),
        "sigma_drift": np.full(L, 0.3),
        "tail_exponent": np.zeros(L),
        "tail_knee": np.full(L, 128.0),
    }
    depth = tuple(np.linspace(0, 1, L).tolist()) if L > 1 else (0.5,)
    base = SynthParams(
        n_expert=trace.n_expert,
        top_k=trace.top_k,
        layers=(),
        depth=depth,
        request_share=float(request_share),
        name=name,
        source=source or str(src),
    )
    seeds = [1000 + i for i in range(n_seeds)]

    def evaluate(vals: dict[str, np.ndarray], sigma_z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        p = _with_values(base, vals, sigma_z)
        arrays = p._arrays()
        st = np.zeros_like(target)
        for s in seeds:
            ids = _run_kernel(p, trace.phase, nr, s, arrays=arrays)
            st += _layer_stats(ids, pres, trace.phase, nr, trace.n_expert)
        st /= len(seeds)
        return ((st - target) ** 2 * w).sum(1), st

    # NOTE: the tail exponent is searched before its knee (with the knee at 128), so that the knee's grid
    # sees a non-zero tail; the refinement rounds then adjust both.
    order = ["copy_next_decode", "copy_far", "zipf_exponent", "tail_exponent", "tail_knee", "dist_exponent"]
    if fit_prefill:
        order.append("copy_next_prefill")
    if fit_drift:
        order.append("sigma_drift")
    real_corr = _interlayer_corr(trace.experts, pres, trace.phase, nr)

    def fit_sigma_z() -> float:
        # inter-layer correlation: one global latent strength, matched on the mean pairwise correlation
        best, out = math.inf, 0.0
        for sz in np.linspace(0.0, 3.0, 13):
            p = _with_values(base, cur, float(sz))
            cs = [_interlayer_corr(_run_kernel(p, trace.phase, nr, s), pres, trace.phase, nr) for s in seeds]
            gap = abs(float(np.mean(cs)) - real_corr)
            if gap < best:
                best, out = gap, float(sz)
        return out

    # NOTE: the latent z moves the mean next-token copy rate (the mean of sigmoid(l + sigma_z z) is
    # nearer 0.5 than sigmoid(l)), so the per-layer search runs with the current sigma_z: sigma_z is
    # fitted after the first (grid) round and again after the last, and the refinement rounds use it.
    # (Version 1 fitted sigma_z only at the end, which left the next-token reuse 3 points too high.)
    sigma_z = 0.0
    best_loss, _ = evaluate(cur, sigma_z)
    for r in range(rounds):
        for name_p in order:
            grid: np.ndarray | None = _GRIDS[name_p]
            if r > 0:  # refine around the current value
                step = (_GRIDS[name_p][1] - _GRIDS[name_p][0]) / 2 ** r
                grid = None
            log2 = name_p in _LOG2_PARAMS
            for j in range(len(_GRIDS[name_p]) if grid is not None else 5):
                trial = dict(cur)
                if grid is not None:
                    v = np.full(L, grid[j])
                else:
                    c = np.log2(cur[name_p]) if log2 else cur[name_p]
                    v = np.clip(c + (j - 2) * step, _GRIDS[name_p][0], _GRIDS[name_p][-1])
                if log2:
                    v = 2.0**v
                trial[name_p] = v
                loss, _ = evaluate(trial, sigma_z)
                # the copy probabilities must leave room for popularity draws (SynthParams.check)
                top = np.maximum(trial["copy_next_decode"], trial["copy_next_prefill"]) + trial["copy_far"]
                loss = np.where(top < _MAX_COPY, loss, np.inf)
                better = loss < best_loss
                cur[name_p] = np.where(better, v, cur[name_p])
                best_loss = np.where(better, loss, best_loss)
        if r == 0 or r == rounds - 1:
            sigma_z = fit_sigma_z()
            best_loss, _ = evaluate(cur, sigma_z)
    if not fit_prefill:
        cur["copy_next_prefill"] = cur["copy_next_decode"].copy()
    loss, st = evaluate(cur, sigma_z)
    for wmsg in warns:
        warnings.warn(f"{src}: {wmsg}", SynthFitWarning, stacklevel=2)
    gaps = np.abs(st - target) * (w > 0)
    quality = {
        "n_decode_tokens": n_dec,
        "n_prefill_tokens": n_pre,
        "n_requests": trace.n_requests,
        "warnings": warns,
        "max_stat_gap_per_layer": gaps.max(1).round(4).tolist(),
        "interlayer_corr": {"real": round(real_corr, 4), "fitted_sigma_z": sigma_z},
        "stat_names": _STAT_NAMES,
        "real_stats": target.round(4).tolist(),
        "synth_stats": st.round(4).tolist(),
    }
    p = _with_values(base, cur, sigma_z)
    return replace(p, quality=quality, notes=tuple(warns))


_STAT_NAMES = [
    "dec_d1", "dec_d2", "dec_d3_4", "dec_d5_8", "dec_d9_16", "dec_d17_32", "dec_d33_64", "dec_far",
    "pre_d1", "pre_d2_8", "pre_far", "top8_share", "top32_share", "drift_overlap",
    "dec_new", "top128_share", "top8_persistence",
]


def _with_values(base: SynthParams, vals: dict[str, np.ndarray], sigma_z: float) -> SynthParams:
    L = len(base.depth)
    layers = tuple(
        LayerSynthParams(**{k: float(vals[k][i]) for k in vals}) for i in range(L)
    )
    return replace(base, layers=layers, sigma_z=float(sigma_z))


# ---------------------------------------------------------------------------------- built-ins
def builtin_names() -> list[str]:
    """Names of the embedded fitted parameter sets (``synth_params/<name>.json``)."""
    root = resources.files("hotexperts.tracer").joinpath(_PARAMS_DIR)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def builtin_params(name: str) -> SynthParams:
    """An embedded fitted parameter set by name (e.g. ``"qwen3.5-122b-a10b"``)."""
    root = resources.files("hotexperts.tracer").joinpath(_PARAMS_DIR)
    f = root.joinpath(f"{name}.json")
    if not f.is_file():
        raise InputError(None, f"no built-in synthetic-trace parameters {name!r} (known: {', '.join(builtin_names())})")
    return SynthParams.from_dict(json.loads(f.read_text(encoding="utf-8")), path=f"<built-in {name}>")


def params_for_model(spec: Any) -> SynthParams:
    """Built-in parameters for a model shape (a :class:`~hotexperts.modelspec.ModelSpec` or a spec string).

    A built-in set whose shape (experts, top-k, MoE layers) matches exactly is used as is; otherwise
    the nearest fitted family (closest in experts, then top-k) is mapped onto the shape with
    :meth:`SynthParams.for_shape`, and its ``notes`` say so.
    """
    if isinstance(spec, (str, os.PathLike)):
        from hotexperts.modelspec import load_model_spec

        spec = load_model_spec(spec)
    ne, k, nl = int(spec.n_expert), int(spec.n_expert_used), len(spec.moe_layers)
    cands = [builtin_params(n) for n in builtin_names()]
    if not cands:
        raise InputError(None, "no built-in synthetic-trace parameters are installed")
    for c in cands:
        if (c.n_expert, c.top_k, c.n_layers) == (ne, k, nl):
            return c
    near = min(cands, key=lambda c: (abs(math.log(c.n_expert / ne)), abs(c.top_k - k), abs(c.n_layers - nl)))
    p = near.for_shape(n_layers=nl, n_expert=ne, top_k=k)
    note = f"no parameters fitted for {spec.name} ({ne} experts, top-{k}, {nl} MoE layers): scaled from {near.name}"
    return replace(p, notes=(*p.notes, note), name=f"{near.name}->scaled")
