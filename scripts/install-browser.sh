#!/usr/bin/env bash
# Installs the headless browser the console's browser tests drive (tests/integration/test_console_browser.py):
# Debian's chromium and its chromedriver, driven by Selenium (the dev extra). Idempotent; no network
# access when both are already there. `make test` runs it; nothing else needs a browser.
set -euo pipefail
say() { echo "install-browser: $*"; }
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    say "$(/usr/bin/chromium --version 2>/dev/null || echo chromium) and chromedriver present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not found: install chromium and chromedriver yourself (the browser tests skip without them)" >&2
    exit 0
fi
say "apt-get install chromium chromium-driver"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
say "$(/usr/bin/chromium --version)"
