#!/usr/bin/env bash
# Install Debian's Chromium (and its driver) for the dashboard's browser test.
# Playwright drives this browser through its executable path; it never
# downloads a browser of its own. Safe to run again: skipped when installed.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "install-browser: installing Debian packages chromium chromium-driver"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
"$CHROMIUM" --version
