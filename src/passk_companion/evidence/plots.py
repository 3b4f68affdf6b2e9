"""Figure helpers shared by all notebooks: one seaborn style, PNG output saved under results/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.figure import Figure

from passk_companion.files import atomic_write
from passk_companion.runtime import results_dir

__all__ = ["style", "savefig"]


def style() -> None:
    """The companion's plotting style (seaborn whitegrid, PNG at a fixed dpi)."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "figure.figsize": (6.4, 4.0)})


def savefig(fig: Figure, name: str) -> Path:
    """Save `fig` as results/figures/<name>.png (atomically) and return the path.

    Every axis of every subplot must be labelled: an unlabelled axis raises ValueError.
    """
    for ax in fig.axes:
        if ax.get_visible() and ax.axison and (not ax.get_xlabel() or not ax.get_ylabel()):
            raise ValueError(f"figure {name!r}: every axis needs an x and a y label")
    path = results_dir() / "figures" / f"{name}.png"
    atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))
    return path
