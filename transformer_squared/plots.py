"""PNG plots (matplotlib, imported lazily, drawn off-screen): expert heatmaps and training curves."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .errors import T2Error
from .fileio import atomic_path
from .targets import layer_index, matrix_kind


class PlotsUnavailable(T2Error):
    """matplotlib (the optional `plots` extra) is not installed."""


def _pyplot():
    # Imported here, not at module level: matplotlib is an optional extra (`transformer-squared[plots]`).
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("plots need matplotlib: pip install 'transformer-squared[plots]'") from None
    return plt


_warned_unavailable = False


def optional_plot(plot: Callable[..., Path], *args, **kwargs) -> Path | None:
    """`plot(*args, **kwargs)` when matplotlib is installed; otherwise None and, once per process, a warning.

    For plots that accompany a result (training curves, an expert's z.png) rather than being the result: a
    missing optional extra must not cost the run its expert."""
    global _warned_unavailable
    try:
        return plot(*args, **kwargs)
    except PlotsUnavailable as e:
        if not _warned_unavailable:
            _warned_unavailable = True
            warnings.warn(f"skipping plots: {e}", stacklevel=2)
        return None


def _save(plt, fig, path: str | Path) -> Path:
    """Write a figure as PNG atomically and free it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def deviation_table(z: Mapping[str, torch.Tensor]) -> tuple[list[int], list[str], torch.Tensor]:
    """Mean |z − 1| per (layer, matrix kind): rows are layers, columns kinds (NaN where absent)."""
    layers = sorted({layer_index(n) for n in z if layer_index(n) is not None})
    kinds = list(dict.fromkeys(matrix_kind(n) for n in z))
    table = torch.full((len(layers), len(kinds)), float("nan"))
    for n, t in z.items():
        li = layer_index(n)
        if li is not None:
            table[layers.index(li), kinds.index(matrix_kind(n))] = (t.float() - 1).abs().mean()
    return layers, kinds, table


def plot_expert(z: Mapping[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """Heatmap of mean |z − 1| per layer and matrix."""
    plt = _pyplot()
    layers, kinds, table = deviation_table(z)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(kinds), 1.5 + 0.22 * len(layers)))
    im = ax.imshow(table.numpy(), aspect="auto", cmap="viridis", origin="lower")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=7)
    ax.set_ylabel("layer")
    ax.set_title(title or "mean |z − 1|", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean |z − 1|")
    return _save(plt, fig, path)


def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "",
                xlabel: str = "step") -> Path:
    """Line plots, one panel per named series of (x, y) points."""
    plt = _pyplot()
    names = [k for k, v in series.items() if v]
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(6, 2.2 * max(1, len(names))), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        xs, ys = zip(*series[name])
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        axes[0, 0].set_title(title)
    return _save(plt, fig, path)
