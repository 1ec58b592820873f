"""Metrics: a progress bar for people, a JSONL file for programs, TensorBoard when asked, PNG curves."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm import tqdm

from lmstack.data.curves import plot_curves, read_metrics  # noqa: F401  (re-exported for train/*)
from lmstack.errors import LmstackError


class MetricsLogger:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int = 0, enabled: bool = True,
                 tensorboard: bool = False, desc: str = "train", console: bool = True, bars: bool = False):
        """enabled: this process writes metrics (rank 0); console: also show a progress bar and messages;
        bars: a transient bar even when not on the console (how `lmstack run` shows a stage)."""
        self.enabled = enabled
        self.console = console
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = None
        self.tb = None
        self.tokens_per_s = None  # the latest logged rate, shown on the progress bar
        if not enabled:
            return
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        if start_step > 0 and self.path.exists():
            self._truncate(start_step)
        if console or bars:
            self.bar = tqdm(total=total_steps, initial=start_step, desc=f"  {desc}" if bars else desc,
                            unit="step", dynamic_ncols=True, leave=not bars)
        if tensorboard:
            try:  # tensorboard is optional (and slow to import)
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise LmstackError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def _truncate(self, start_step: int) -> None:
        """A resumed run: drop what was logged after its checkpoint (those steps run again) and a line a kill
        cut short, so that the log reads as an uninterrupted run's."""
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("step", 0) <= start_step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(self.path)

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
            if self.tokens_per_s is not None:
                shown = {**shown, "tok/s": f"{self.tokens_per_s:.0f}"}
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
