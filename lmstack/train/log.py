"""Metrics: a progress bar for people, a JSONL file for programs, TensorBoard when asked, PNG curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

# `lmstack run` sets this: every stage shows a transient bar even when quiet (one line per stage stays).
PIPELINE_BARS = False


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = False, desc: str = "train", console: bool = True):
        """enabled: this process writes metrics (rank 0); console: also show a progress bar."""
        self.enabled = enabled
        self.console = console
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        self.tb = None
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if console or PIPELINE_BARS:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"  {desc}" if PIPELINE_BARS else desc,
                            unit="step", dynamic_ncols=True, leave=not PIPELINE_BARS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                from lmstack.errors import LmstackError
                raise LmstackError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def progress(self, n: int = 1, **shown) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                                 refresh=False)

    def write(self, msg: str) -> None:
        if self.bar is not None and self.console:
            self.bar.write(msg)
        elif self.enabled and self.console:
            print(msg)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], keys: list[str], out_png: Path, title: str = "", logy: bool = False) -> Path:
    """One panel per metric against step; records lacking a key are skipped for that panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in records)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 3.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = [(r["step"], r[k]) for r in records if k in r and r[k] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
        if logy:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
