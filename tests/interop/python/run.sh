#!/usr/bin/env bash
# Runs the Python interop test against a built spoold.
#
# Creates a virtual environment under target/interop-python-venv (reused between runs),
# installs requirements.txt from PyPI, and runs test_interop.py, test_groups.py, test_tls.py and
# test_queues.py,
# which generate the Python stubs from proto/spool/v1/spool.proto with grpcio-tools into a
# temporary directory (support.py holds what they share). Builds nothing: build spoold
# first (`cargo build -p spool-broker`).
#
# Environment:
#   SPOOL_BIN   the spoold binary (default: target/debug/spoold)
#   PYTHON      the interpreter that creates the venv (default: python3)
#   VENV        where the venv lives (default: target/interop-python-venv)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
cd "$root"

bin="${SPOOL_BIN:-target/debug/spoold}"
if [[ ! -x "$bin" ]]; then
    echo "run.sh: $bin is not an executable; build it with: cargo build -p spool-broker" >&2
    exit 2
fi
venv="${VENV:-$root/target/interop-python-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
SPOOL_BIN="$bin" "$venv/bin/python" "$here/test_interop.py"
SPOOLD="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_groups.py"
SPOOLD="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_tls.py"
SPOOLD="$bin" "$venv/bin/python" -m pytest -q -p no:cacheprovider "$here/test_queues.py"
