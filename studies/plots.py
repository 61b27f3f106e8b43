"""Plots of a tuning study (matplotlib, Agg backend), each written as PNG and SVG.

Each function takes plain arrays/dicts so the report can be rebuilt from stored results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hotexperts._atomic import atomic_path

__all__ = [
    "plot_hit_curves",
    "plot_fork_heatmap",
    "plot_pareto",
    "plot_popularity",
    "plot_layer_hits",
    "plot_history",
    "pareto_front",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out_dir: Path, stem: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        target = out_dir / f"{stem}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight")
        paths.append(str(target))
    _plt().close(fig)
    return paths


def plot_hit_curves(out_dir: Path, ks: Sequence[int], curves: dict[str, Sequence[float]], *, title: str) -> list[str]:
    """Decode hit rate vs slots per layer, one line per policy; Belady dashed as the bound."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ys in curves.items():
        style = {"linestyle": "--", "color": "black", "linewidth": 2} if name == "belady" else {"marker": "o", "markersize": 3}
        ax.plot(list(ks), [100 * y for y in ys], label=name + (" (offline bound)" if name == "belady" else ""), **style)
    ax.set_xlabel("slots per layer (K)")
    ax.set_ylabel("decode hit rate (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "hit_rate_vs_slots")


def plot_fork_heatmap(out_dir: Path, ks: Sequence[int], intervals: Sequence[int], grid: np.ndarray, *, label: str) -> list[str]:
    """Predicted objective of the fork over K x interval (blank where it does not fit)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    data = np.ma.masked_invalid(grid)
    im = ax.imshow(data, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(len(intervals)), [str(i) for i in intervals])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("rebalance interval (decode calls)")
    ax.set_ylabel("hot slots per layer K")
    ax.set_title(f"fork: predicted {label} by K and interval")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(im, ax=ax, label=label)
    return _save(fig, out_dir, "fork_k_interval_heatmap")


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Indices of non-dominated points of ``(vram, value)`` rows (minimise vram, maximise value)."""
    if len(points) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-points[:, 1], points[:, 0]))
    front, best = [], -np.inf
    for i in order:
        if points[i, 1] > best:
            front.append(i)
            best = points[i, 1]
    return np.asarray(front, np.int64)


def plot_pareto(out_dir: Path, vram_gib: Sequence[float], values: Sequence[float], families: Sequence[str], *,
                budget_gib: float, label: str) -> list[str]:
    plt = _plt()
    pts = np.column_stack([np.asarray(vram_gib, float), np.asarray(values, float)]) if len(values) else np.zeros((0, 2))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    fams = sorted(set(families))
    for f in fams:
        m = np.asarray([x == f for x in families])
        ax.scatter(pts[m, 0], pts[m, 1], s=12, alpha=0.6, label=f)
    front = pareto_front(pts)
    if front.size:
        ax.plot(pts[front, 0], pts[front, 1], color="black", drawstyle="steps-post", label="Pareto front")
    ax.axvline(budget_gib, color="red", linestyle=":", label="VRAM budget")
    ax.set_xlabel("VRAM (GiB)")
    ax.set_ylabel(label)
    ax.set_title("trials: speed vs VRAM")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out_dir, "pareto_tok_s_vs_vram")


def plot_popularity(out_dir: Path, counts: np.ndarray, moe_layers: Sequence[int]) -> list[str]:
    """Per-layer expert popularity: share of selections by popularity rank (experts sorted per layer)."""
    plt = _plt()
    c = np.asarray(counts, float)
    tot = c.sum(axis=1, keepdims=True)
    share = np.sort(np.divide(c, tot, out=np.zeros_like(c), where=tot > 0), axis=1)[:, ::-1]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    im = ax.imshow(100 * share, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    ax.set_xlabel("expert popularity rank within the layer")
    ax.set_ylabel("MoE layer")
    step = max(1, len(moe_layers) // 12)
    ax.set_yticks(range(0, len(moe_layers), step), [str(moe_layers[i]) for i in range(0, len(moe_layers), step)])
    ax.set_title("expert popularity per layer (share of the layer's selections, %)")
    fig.colorbar(im, ax=ax, label="% of selections")
    return _save(fig, out_dir, "expert_popularity")


def plot_layer_hits(out_dir: Path, moe_layers: Sequence[int], series: dict[str, Sequence[float]]) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    x = np.arange(len(moe_layers))
    width = 0.8 / max(1, len(series))
    for i, (name, ys) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, [100 * (y if y == y else 0) for y in ys], width, label=name)
    step = max(1, len(moe_layers) // 16)
    ax.set_xticks(x[::step], [str(moe_layers[i]) for i in range(0, len(moe_layers), step)])
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("decode hit rate (%)")
    ax.set_title("per-layer hit rate")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out_dir, "hit_rate_per_layer")


def plot_history(out_dir: Path, numbers: Sequence[int], values: Sequence[float], pruned: Sequence[int], *,
                 label: str) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.scatter(numbers, values, s=10, alpha=0.6, label="completed trial")
    if len(values):
        order = np.argsort(numbers)
        best = np.maximum.accumulate(np.asarray(values, float)[order])
        ax.plot(np.asarray(numbers)[order], best, color="red", label="best so far")
    if len(pruned):
        lo = min(values) if len(values) else 0.0
        ax.scatter(pruned, [lo] * len(pruned), marker="x", color="grey", s=10, label="pruned (does not fit)")
    ax.set_xlabel("trial")
    ax.set_ylabel(label)
    ax.set_title("optimization history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, "optimization_history")
