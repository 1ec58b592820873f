"""bench/gpu.py --dry-run: every step of the GPU benchmark runs (tiny shapes, CPU), so the script is known to work
before a GPU is lent; a dry run never touches docs/benchmarks.md."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_benchmark_dry_run(tmp_path):
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    md = (tmp_path / "gpu.md").read_text()
    for step in ("pretrain", "lora-sft", "lora-dpo", "ppo", "decode", "serve"):
        assert f"| {step} | " in md and "failed" not in md, md
    assert "dry run" in md
    assert (ROOT / "docs" / "benchmarks.md").read_text() == docs
