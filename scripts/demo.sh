#!/usr/bin/env bash
# The main job on the embedded default: builds .venv if needed, then runs it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
exec lmstack demo "$@"
