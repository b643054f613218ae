"""The PNG of a fitted IsoFLOP study: the curves with their minima, and the fitted power laws (matplotlib, off-screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskdiff.scaling.fit import FAMILY_NAMES, StudyFit
from maskdiff.scaling.plan import budget_label

STYLES = {"mdm": ("o", "-"), "ar": ("s", "--")}  # marker, line


def plot_study(study: StudyFit, out_png: Path) -> Path:
    """Three panels: loss against N per budget (points, parabolas, minima as stars); N*(C); L*(C)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({p.budget for fit in study.families.values() for p in fit.parabolas})
    colours = {b: plt.get_cmap("viridis")(i / max(1, len(budgets) - 1) * 0.85) for i, b in enumerate(budgets)}
    fig, (curves, sizes, losses) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=120)
    for name, fit in study.families.items():
        marker, line = STYLES.get(name, ("^", ":"))
        for p in fit.parabolas:
            n = np.array([q.params for q in p.points], dtype=float)
            ends = [n.min(), n.max()] + ([p.n_opt] if p.n_opt is not None else [])
            grid = np.geomspace(min(ends) / 1.2, max(ends) * 1.2, 100)
            colour = colours[p.budget]
            curves.plot(n, [q.loss for q in p.points], marker, color=colour, markersize=5)
            valley = "" if p.n_opt is not None else " (no minimum)"
            curves.plot(grid, p.loss(grid), line, color=colour, linewidth=1.2, label=f"{name} C={budget_label(p.budget)}{valley}")
            if p.n_opt is not None:
                curves.plot([p.n_opt], [p.loss_opt], "*", color=colour, markersize=13, markeredgecolor="black")
        valleys = [p for p in fit.parabolas if p.n_opt is not None]
        if not valleys:
            continue
        c = np.array([p.budget for p in valleys])
        label = FAMILY_NAMES.get(name, name)
        sizes.plot(c, [p.n_opt for p in valleys], marker, color="black" if name == "ar" else "tab:blue", label=f"{label} N*")
        losses.plot(c, [p.loss_opt for p in valleys], marker, color="black" if name == "ar" else "tab:blue", label=f"{label} L*")
        grid_c = np.geomspace(c.min() / 2, c.max() * 2, 50)
        if fit.n_opt is not None:
            sizes.plot(grid_c, fit.n_opt(grid_c), line, color="black" if name == "ar" else "tab:blue", label=f"N* ∝ C^{fit.n_opt.exponent:.3f}")
        if fit.loss_opt is not None:
            losses.plot(
                grid_c, fit.loss_opt(grid_c), line, color="black" if name == "ar" else "tab:blue", label=f"L* ∝ C^{fit.loss_opt.exponent:.4f}"
            )
    curves.set(
        xscale="log", xlabel="N (non-embedding parameters)", ylabel="final validation loss (bits/token)", title="IsoFLOP curves (stars: minima)"
    )
    sizes.set(xscale="log", yscale="log", xlabel="C = 6 N D (FLOPs)", ylabel="N*", title="compute-optimal size")
    title = "compute-optimal loss"
    if study.compute_multiple:
        shown = [m["multiple"] for m in study.compute_multiple if m["multiple"] is not None]
        if shown:
            span = f"{min(shown):.3g}x" if max(shown) / min(shown) < 1.05 else f"{min(shown):.3g}x to {max(shown):.3g}x"
            title += f"\nMDM: {span} the ARM's compute"
    losses.set(xscale="log", yscale="log", xlabel="C = 6 N D (FLOPs)", ylabel="L* (bits/token)", title=title)
    for ax in (curves, sizes, losses):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
