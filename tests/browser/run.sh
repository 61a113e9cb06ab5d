#!/usr/bin/env bash
# Runs the console's browser test: headless Chromium over WebDriver (Debian's chromium and
# chromium-driver) against real spoolds. Builds nothing: build spoold and spool first
# (`cargo build -p spool-broker -p spool-client`). Screenshots of the main pages land in
# target/console-screenshots/ (refreshing docs/console-*.png is `tests/browser/run.sh &&
# cp target/console-screenshots/*.png docs/`, by hand, not on every run).
#
# Environment: SPOOL_BIN and SPOOL_CLI (the binaries, relative to the repository root;
# default target/debug/spoold and target/debug/spool), CHROMIUM, CHROMEDRIVER.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${PYTHON:-python3}" "$here/console_test.py"
