#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: chromium + chromium-driver for the web chat
# page's browser test (tests/serve/test_browser.py skips without them). Idempotent and quiet: does
# nothing when they are already installed; needs root (CI runs as root) or passwordless sudo.
set -euo pipefail
PKGS=(chromium chromium-driver)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ci-system-deps: no apt-get; install ${missing[*]} by hand (the browser test will be skipped)" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
export DEBIAN_FRONTEND=noninteractive
echo "ci-system-deps: installing ${missing[*]}" >&2
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
