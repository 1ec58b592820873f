#!/usr/bin/env bash
# A one-minute look (`lmstack demo`): builds .venv if needed, then suite -> tokenizer -> pretrain -> decode.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
exec lmstack demo "$@"
