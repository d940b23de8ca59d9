"""PNG plots of the experiments (matplotlib, Agg backend: no display needed).

- learning curves: accuracy and loss against wall time and against iterations, every run on one figure;
- attention heatmaps as in the SAB paper's Figure 3: batch-mean attention weight of each attending
  step (vertical) on each attended step (horizontal), one panel per training snapshot.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def learning_curves(records: list, path, *, title: str = "", chance: dict | None = None) -> Path:
    """``chance``: optional {"acc": ..., "loss": ...} of a memoryless predictor, drawn dashed."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharey="row")
    for r in records:
        h = r["history"]
        if not h:
            continue
        label = f"{r['config']['method']} ({r['name']})"
        t = [p["time"] for p in h]
        it = [p["iter"] for p in h]
        for col, xs in enumerate((t, it)):
            axes[0, col].plot(xs, [p["acc"] for p in h], label=label, lw=1)
            axes[1, col].plot(xs, [p["loss"] for p in h], label=label, lw=1)
    for col, xlabel in enumerate(("training wall time (s)", "iteration")):
        axes[1, col].set_xlabel(xlabel)
        for row in range(2):
            axes[row, col].grid(alpha=0.3)
    for row, key in enumerate(("acc", "loss")):
        if chance and key in chance:
            for col in range(2):
                axes[row, col].axhline(chance[key], color="gray", ls="--", lw=1,
                                       label="memoryless baseline" if col == 0 else None)
    axes[0, 0].set_ylabel("training accuracy")
    axes[1, 0].set_ylabel("training loss")
    axes[1, 0].set_yscale("log")
    if axes[0, 0].get_legend_handles_labels()[0]:  # runs shorter than one log window draw nothing
        axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(title or "learning curves")
    return _save(fig, path)


def attention_heatmaps(snapshots: dict, path, *, title: str = "", focus_rows: int = 20) -> Path:
    """``snapshots``: {"iter_N": matrix [attending t, attended s + 1] (column 0 = h0)}.

    Top row: the whole matrix. Bottom row: the last ``focus_rows`` attending steps (for copying, the
    marker and the output steps), the view of the paper's Figure 3."""
    keys = sorted(snapshots, key=lambda k: int(k.split("_")[1]))
    fig, axes = plt.subplots(2, len(keys), figsize=(4.5 * len(keys), 8), squeeze=False)
    for col, key in enumerate(keys):
        m = np.asarray(snapshots[key])
        T = m.shape[0]
        extent_full = (-1.5, T - 0.5, T - 0.5, -0.5)  # x: attended step (-1 = h0), y: attending step
        # Square-root colour scale: weights spread over many slots stay visible next to a near-1 peak.
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=max(float(m.max()), 1e-12))
        im = axes[0, col].imshow(m, aspect="auto", cmap="viridis", extent=extent_full, interpolation="nearest",
                                 norm=norm)
        axes[0, col].set_title(f"iteration {key.split('_')[1]}")
        fig.colorbar(im, ax=axes[0, col], fraction=0.046)
        rows = min(focus_rows, T)
        im = axes[1, col].imshow(m[T - rows:], aspect="auto", cmap="viridis", interpolation="nearest",
                                 extent=(-1.5, T - 0.5, T - 0.5, T - rows - 0.5), norm=norm)
        fig.colorbar(im, ax=axes[1, col], fraction=0.046)
        for row in range(2):
            axes[row, col].yaxis.set_major_locator(MaxNLocator(integer=True))
            axes[row, col].set_xlabel("attended step (-1 = h0)")
            axes[row, col].set_ylabel("attending step")
    fig.suptitle((title or "SAB attention") + " - batch-mean weight, square-root colour scale")
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Writes the figure as a PNG (creating the folder) and frees it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
