#!/usr/bin/env bash
# The main job on the embedded default: builds .venv if needed, then runs the whole course (`lmstack run`).
# Arguments go to `lmstack run`, e.g. `bash scripts/run.sh smollm2` or `bash scripts/run.sh --resume`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
exec lmstack run "$@"
