"""PNG plots of a run: the loss curve and GenMD4's learned token exponents (matplotlib, drawn off-screen)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from maskdiff.metrics import read_metrics


def plot_loss(metrics_csv: Path, out_png: Path, unit: str = "token") -> Path:
    """Training and validation bits per token against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_csv)

    def series(column: str) -> tuple[list[int], list[float]]:
        points = [(int(r["step"]), float(r[column])) for r in rows if r.get(column)]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        return [s for s, _ in points], [v for _, v in points]

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for column, label, style in (("train_bits", "train", "-"), ("valid_bits", "validation (EMA)", "o-")):
        steps, values = series(column)
        if steps:
            ax.plot(steps, values, style, label=label, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(f"NELBO, bits per {unit}")
    ax.set_title("maskdiff training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def write_token_powers(powers: list[float], labels: list[str], run_dir: Path) -> list[Path]:
    """GenMD4's learned exponents: RUN/token_powers.json ({label: w}) and a bar plot RUN/token_powers.png.

    A larger w keeps that token unmasked longer (alpha = 1 - t^w), so it is revealed earlier in sampling.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    (run_dir / "token_powers.json").write_text(json.dumps(dict(zip(labels, powers)), ensure_ascii=False, indent=1) + "\n")
    order = sorted(range(len(powers)), key=lambda i: -powers[i])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.16 * len(powers) + 1.5), 3.8), dpi=120)
    # bars start at w = 1 (the linear schedule), so small departures stay visible
    ax.bar(range(len(order)), [powers[i] - 1 for i in order], bottom=1.0, color="tab:blue")
    ax.set_xticks(range(len(order)), [labels[i] for i in order], fontsize=7, family="monospace")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_ylabel("learned exponent w")
    ax.set_title("GenMD4 per-token schedules alpha(t) = 1 - t^w (higher w: kept longer, revealed earlier)")
    ax.margins(x=0.01, y=0.1)
    fig.tight_layout()
    out = run_dir / "token_powers.png"
    fig.savefig(out)
    plt.close(fig)
    return [run_dir / "token_powers.json", out]
