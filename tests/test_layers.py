"""The layer order of ../shared/design.md, kept by import-linter (the contract is in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports not found: install the test extras (pip install -e '.[test]')")
    p = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    report = p.stdout + p.stderr
    broken = report[report.find("Broken contracts"):] if "Broken contracts" in report else report
    assert p.returncode == 0, "import layers broken:\n" + broken
    assert "2 kept, 0 broken" in report, report  # the layers and "evaluate never imports train"
