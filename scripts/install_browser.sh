#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver from Debian (packages chromium and
# chromium-driver) for tests/test_browser.py. Idempotent: when both are already on
# PATH it prints their versions and exits without touching apt.
# Needs root (or sudo) to install; CI runs it as root from scripts/setup.sh.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
  echo "install_browser: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version 2>/dev/null | head -n1)"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif have sudo; then
  SUDO="sudo"
else
  echo "install_browser: chromium/chromedriver missing and not root (no sudo); run as root:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver" >&2
  exit 1
fi
if ! have apt-get; then
  echo "install_browser: no apt-get here; install Chromium and a matching chromedriver yourself" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
echo "install_browser: $(chromium --version 2>/dev/null | head -n1); $(chromedriver --version 2>/dev/null | head -n1)"
