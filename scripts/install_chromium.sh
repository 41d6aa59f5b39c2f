#!/bin/sh
# Install headless Chromium and its WebDriver for tests/test_report_browser.py.
#
# Idempotent: does nothing when both binaries are already on PATH. Never fails the
# caller: when apt-get is missing or the install fails (no root, no network), it
# prints a warning and exits 0, and the browser test then skips with a reason.
set -u

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install_chromium: chromium and chromedriver already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: WARNING: apt-get not found; install chromium and chromedriver" \
         "by hand or the browser test will skip" >&2
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install_chromium: WARNING: not root and no sudo; cannot install chromium" >&2
        exit 0
    fi
fi

export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium chromium-driver; then
    echo "install_chromium: installed $(command -v chromium) and $(command -v chromedriver)"
else
    echo "install_chromium: WARNING: apt-get install chromium chromium-driver failed;" \
         "the browser test will skip" >&2
fi
exit 0
