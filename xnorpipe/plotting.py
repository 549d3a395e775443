"""Training curves as a PNG (matplotlib Agg, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from xnorpipe.utils import atomic_path


def plot_curves(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Train/test top-1 and loss per epoch from the training log's records."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    try:
        for ax, key, label in ((ax_acc, "top1", "top-1 (%)"), (ax_loss, "loss", "cross-entropy")):
            ax.plot(epochs, [r[f"train_{key}"] for r in records], marker=".", label="train")
            ax.plot(epochs, [r[f"test_{key}"] for r in records], marker=".", label="test")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
        if records:
            best = max(records, key=lambda r: r["test_top1"])
            ax_acc.set_title(f"best test top-1 {best['test_top1']:.2f} % (epoch {best['epoch']})")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
