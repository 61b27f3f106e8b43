"""Outputs of a study: ``best.json``, run files, plots and a self-contained ``report.html``.

:func:`finalize` writes them from a finished study; :func:`rebuild_report` does it again from what a
previous ``hotexperts tune`` stored in its folder (``tune.json``, ``trace.hxt``, the optuna study).
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts import __version__
from hotexperts._atomic import write_text_atomic
from hotexperts.errors import InputError
from hotexperts.studies import plots
from hotexperts.studies.runfiles import RunConfig, mainline_placement, write_run_files
from hotexperts.studies.tune import (
    Candidate,
    Evaluator,
    GiB,
    TuneConfig,
    belady_bound,
    best_trial,
    build_evaluator,
    candidate_from_trial,
    completed,
    fork_grid,
    open_study,
    pct,
    summarize,
    write_json,
)
from hotexperts.tracer.trace import Trace

__all__ = ["finalize", "rebuild_report"]


def _objective_label(cfg: TuneConfig) -> str:
    return "decode tok/s" if cfg.prefill_weight <= 0 else f"mixed tok/s (prefill share {cfg.prefill_weight:g})"


def finalize(study: Any, ev: Evaluator, cfg: TuneConfig, out_dir: Path, *, storage: str, study_name: str,
             seconds: float | None = None) -> dict[str, Any]:
    """Write every output for the study's best configuration; returns the ``best.json`` content."""
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    bt = best_trial(study, cfg)
    cand = candidate_from_trial(bt)
    res = ev.evaluate(cand)
    best = summarize(res, ev, cand)
    baselines = {name: summarize(ev.evaluate(c), ev, c) for name, c in ev.baselines().items()}
    for b in baselines.values():
        b["speedup_pct_of_best"] = pct(best["objective"], b["objective"])
    bel = belady_bound(ev, cand)
    bound = {
        "label": bel.label,
        "hit_rate": bel.hit_rate,
        "decode_tok_s": bel.decode_tok_s,
        "objective": ev.objective(bel),
        "hit_rate_gap_points": 100.0 * (bel.hit_rate - res.hit_rate),
        "tok_s_gap_pct": pct(ev.objective(bel), best["objective"]),
    }
    trials = study.get_trials(deepcopy=False)
    n_complete = sum(t.state == TrialState.COMPLETE for t in trials)
    n_pruned = sum(t.state == TrialState.PRUNED for t in trials)
    model = ev.model
    placement = mainline_placement(model, int(max(0.0, ev.free_bytes)))
    out: dict[str, Any] = {
        "hotexperts_version": __version__,
        "model": model.name,
        "hardware": ev.hw.name,
        "vram_gb": cfg.vram_gb,
        "context": cfg.context,
        "kv_type": cfg.kv_type,
        "objective": _objective_label(cfg),
        "trace": cfg.trace or "synthetic (embedded default)",
        "trace_sha256": cfg.trace_sha,
        "best": best,
        "baselines": baselines,
        "belady_bound": bound,
        "mainline": placement,
        "study": {
            "name": study_name,
            "storage": storage if not storage.startswith("postgresql") else storage.split("@")[-1],
            "trials_complete": n_complete,
            "trials_pruned": n_pruned,
            "trials_total": len(trials),
            "best_trial": bt.number,
            "seed": cfg.seed,
            "seconds": seconds,
        },
        "config": cfg.to_json(),
    }
    # ---- run files
    profile = None
    if cand.policy == "static":
        from hotexperts.tracer.profile import profile_from_trace

        # NOTE: the fork builds its static set from a profile; give it the whole trace's counts.
        profile = profile_from_trace(ev.trace, source="hotexperts-tune")
    rc = RunConfig(
        policy=cand.policy,
        params=dict(best["params"]) if isinstance(best["params"], dict) else {},
        slots=tuple(best["slots_per_layer"]),
        context=cfg.context,
        kv_type=cfg.kv_type,
        ubatch=cfg.ubatch,
        gpu_layers=tuple(int(il) for il, s in zip(model.moe_layers, best["slots_per_layer"]) if s >= model.n_expert)
        if cand.policy == "layer-offload" else (),
    )
    out["run_files"] = write_run_files(out_dir, rc, model, vram_budget_bytes=int(max(0.0, ev.free_bytes)),
                                       profile=profile)
    # ---- plots
    out["plots"] = _plots(study, ev, cfg, out_dir, cand, res, bel)
    out["report_seconds"] = time.perf_counter() - t0
    write_json(out_dir / "best.json", out)
    write_text_atomic(out_dir / "report.html", render_html(out, out_dir))
    return out


def _plots(study: Any, ev: Evaluator, cfg: TuneConfig, out_dir: Path, cand: Candidate, res: Any, bel: Any) -> dict[str, list[str]]:
    from optuna.trial import TrialState

    from hotexperts.sim.replay import hit_curve

    label = _objective_label(cfg)
    ne = ev.model.n_expert
    kmax = max(8, min(ne, max(ev.kmax, 8)))
    ks = sorted({k for k in (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256) if k <= kmax} | {kmax})
    curves: dict[str, list[float]] = {}
    for fam in ("fork", "lru", "window", "decay", "static"):
        if fam not in cfg.policies and fam != "lru":
            continue
        params: dict[str, Any] = {"interval": 60, "pp_bypass": 64} if fam == "fork" else {}
        if fam == cand.policy:
            params = dict(cand.params)
        pol = ev.policy_config(Candidate(fam, params, [1] * ev.model.n_moe_layers))
        curves[fam] = [float(x) for x in hit_curve(ev.trace, pol, ks)]
    curves["belady"] = [float(x) for x in hit_curve(ev.trace, ev.policy_config(Candidate("belady", {}, [1])), ks)]
    out = {"hit_rate_vs_slots": plots.plot_hit_curves(out_dir, ks, curves, title=f"{ev.model.name}: hit rate vs slots")}
    intervals = [20, 40, 60, 100, 150, 200]
    gks = sorted({int(round(x)) for x in np.linspace(max(1, kmax // 8), kmax, 8)})
    grid = fork_grid(ev, gks, intervals)
    out["fork_heatmap"] = plots.plot_fork_heatmap(out_dir, gks, intervals, grid, label=label)
    trials = completed(study)
    vram = [t.user_attrs.get("vram_bytes", np.nan) / GiB for t in trials]
    vals = [t.values[0] for t in trials]
    fams = [t.user_attrs["candidate"]["policy"] for t in trials]
    out["pareto"] = plots.plot_pareto(out_dir, vram, vals, fams, budget_gib=cfg.vram_gb, label=label)
    out["popularity"] = plots.plot_popularity(out_dir, ev.trace.counts(), ev.model.moe_layers)
    out["layer_hits"] = plots.plot_layer_hits(
        out_dir, ev.model.moe_layers, {f"best ({res.label})": res.hit_rate_per_layer, "belady bound": bel.hit_rate_per_layer}
    )
    pruned = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))]
    out["history"] = plots.plot_history(out_dir, [t.number for t in trials], vals, pruned, label=label)
    write_json(out_dir / "curves.json", {"ks": ks, "curves": curves, "fork_grid": {"ks": gks, "intervals": intervals,
                                                                                   "values": grid.tolist()}})
    return out


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return html.escape(str(x))


def render_html(best: dict[str, Any], out_dir: Path) -> str:
    """One self-contained page: recommendation, tables, run files and the plots embedded as PNG."""
    b = best["best"]
    rows = []
    for name, r in [("recommended", b), *best["baselines"].items()]:
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(r['label'])}</td><td>{_fmt(r['decode_tok_s'])}</td>"
            f"<td>{_fmt(r['prefill_tok_s'], 1)}</td><td>{_fmt(100 * r['hit_rate'], 1)}</td>"
            f"<td>{_fmt(r['vram_gib'])}</td><td>{_fmt(r.get('speedup_pct_of_best'), 1)}</td></tr>"
        )
    bound = best["belady_bound"]
    vb = b["vram_breakdown"]
    vram_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v / GiB:.2f}</td></tr>"
        for k, v in vb.items() if isinstance(v, float) and k not in ("budget", "free", "total")
    )
    files = []
    for kind, path in best.get("run_files", {}).items():
        p = Path(path)
        text = p.read_text(encoding="utf-8") if p.exists() and p.stat().st_size < 200_000 else ""
        if p.suffix == ".moeprof":
            text = "\n".join(text.splitlines()[:3]) + "\n..."
        files.append(f"<h3>{html.escape(p.name)} <small>({html.escape(kind)})</small></h3><pre>{html.escape(text)}</pre>")
    imgs = []
    for name, paths in best.get("plots", {}).items():
        png = next((Path(p) for p in paths if p.endswith(".png")), None)
        if png is None or not png.exists():
            continue
        data = base64.b64encode(png.read_bytes()).decode()
        imgs.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"><figcaption>'
                    f"{html.escape(name.replace('_', ' '))}</figcaption></figure>")
    st = best["study"]
    speed = b.get("objective")
    base_n = best["baselines"].get("best-n-cpu-moe", {})
    gain = base_n.get("speedup_pct_of_best")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hotexperts tuning report: {html.escape(best['model'])}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child, td:nth-child(2), th {{ text-align: left; }} pre {{ background: #f5f5f5; padding: 8px; overflow-x: auto; }}
.rec {{ background: #eef7ee; border: 1px solid #9c9; padding: 1em; border-radius: 6px; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>hotexperts tuning report</h1>
<p>Model <b>{html.escape(best['model'])}</b> on <b>{html.escape(best['hardware'])}</b>, VRAM budget {best['vram_gb']:g} GiB,
context {best['context']} tokens ({html.escape(best['kv_type'])} KV cache). Trace: {html.escape(str(best['trace']))}.
Objective: {html.escape(best['objective'])}.</p>
<div class="rec"><h2>Recommendation: {html.escape(b['label'])}</h2>
<p>Policy <b>{html.escape(b['policy'])}</b> ({html.escape(b['mode'])}), predicted <b>{_fmt(b['decode_tok_s'])} tok/s decode</b>,
{_fmt(b['prefill_tok_s'], 1)} tok/s prefill, decode hit rate {_fmt(100 * b['hit_rate'], 1)} %, VRAM {_fmt(b['vram_gib'])} GiB.
{"" if gain is None else f"That is {gain:+.1f} % over the best --n-cpu-moe that fits."}</p>
<p>Parameters: <code>{html.escape(json.dumps(b['params']))}</code>; slots per layer: {html.escape(_slots_text(b['slots_per_layer']))}.</p>
<p>Offline bound (Belady at the same VRAM): hit rate {_fmt(100 * bound['hit_rate'], 1)} %, {_fmt(bound['decode_tok_s'])} tok/s decode
(gap {_fmt(bound['hit_rate_gap_points'], 1)} points, {_fmt(bound['tok_s_gap_pct'], 1)} % speed).</p></div>
<h2>Compared with what you run today</h2>
<table><tr><th>configuration</th><th>label</th><th>decode tok/s</th><th>prefill tok/s</th><th>hit rate %</th><th>VRAM GiB</th>
<th>recommended is faster by %</th></tr>{''.join(rows)}</table>
<h2>VRAM of the recommendation (GiB)</h2><table><tr><th>part</th><th>GiB</th></tr>{vram_rows}
<tr><td><b>total</b></td><td><b>{vb.get('total', 0) / GiB:.2f}</b></td></tr><tr><td>budget</td><td>{vb.get('budget', 0) / GiB:.2f}</td></tr></table>
<h2>Run files</h2>{''.join(files)}
<h2>Plots</h2>{''.join(imgs)}
<h2>Study</h2><p>{st['trials_complete']} trials scored, {st['trials_pruned']} pruned (did not fit), best trial #{st['best_trial']};
study <code>{html.escape(st['name'])}</code> in <code>{html.escape(st['storage'])}</code>; seed {st['seed']}.
Objective value of the best: {_fmt(speed)}. hotexperts {html.escape(best['hotexperts_version'])}.</p>
</body></html>
"""


def _slots_text(slots: list[int]) -> str:
    if slots and all(s == slots[0] for s in slots):
        return f"{slots[0]} in every layer"
    return ", ".join(str(s) for s in slots)


def rebuild_report(out_dir: Path, *, storage: str | None = None) -> dict[str, Any]:
    """Rebuild ``best.json``, run files, plots and ``report.html`` from a stored study in ``out_dir``."""
    cfg_path = out_dir / "tune.json"
    if not cfg_path.exists():
        raise InputError(out_dir, "no tune.json here: not a folder written by `hotexperts tune`")
    try:
        stored = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg = TuneConfig.from_json(stored["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(cfg_path, f"corrupt tune.json ({exc})") from None
    trace = Trace.load(out_dir / "trace.hxt")
    ev = build_evaluator(cfg, trace)
    url = storage or stored["storage"]
    study = open_study(url, stored["study_name"], cfg)
    return finalize(study, ev, cfg, out_dir, storage=url, study_name=stored["study_name"])
