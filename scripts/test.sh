#!/usr/bin/env bash
# The test suite: builds .venv with the test extras if needed, then runs pytest.
set -euo pipefail
EXTRAS=test
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$ROOT"
exec python -m pytest "$@"
