"""Training metrics: one CSV row per logged step and the same scalars in TensorBoard."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("step", "tokens", "lr", "train_loss", "train_bits", "grad_norm", "tokens_per_s", "skipped_steps", "valid_bits")


class MetricsLog:
    """Appends rows to RUN/metrics.csv and RUN/tensorboard/; a resumed run first drops rows after its step."""

    def __init__(self, run_dir: Path, resume_step: int = 0, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.csv"
        self._truncate_after(resume_step)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new:
            self._csv.writeheader()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        rows = read_metrics(self.path)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(r for r in rows if r.get("step", "").isdigit() and int(r["step"]) <= step)

    def log(self, step: int, **values: float) -> None:
        row = {"step": step, **{k: f"{v:.6g}" for k, v in values.items()}}
        self._csv.writerow(row)
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
