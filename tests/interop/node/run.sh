#!/usr/bin/env bash
# Runs the Node.js interop tests against a built spoold.
#
# Installs @grpc/grpc-js and @grpc/proto-loader from npm at the versions package-lock.json
# pins (`npm ci`, into node_modules here), and runs test/*.test.js with node's built-in test
# runner, one file at a time; each file starts its own spoold on a fresh data directory.
# The service is loaded at run time from proto/spool/v1/spool.proto (support.js): no
# generated code. Builds nothing: build spoold first (`cargo build -p spool-broker`).
#
# Environment:
#   SPOOL_BIN   the spoold binary, relative to the repository root (default: target/debug/spoold)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
bin="${SPOOL_BIN:-target/debug/spoold}"
if [[ ! -x "$root/$bin" && ! -x "$bin" ]]; then
    echo "run.sh: $bin is not an executable; build it with: cargo build -p spool-broker" >&2
    exit 2
fi
cd "$here"
npm ci --no-audit --no-fund --loglevel=error
SPOOL_BIN="$bin" node --test --test-concurrency=1 test/
