#!/usr/bin/env bash
# `make bench`: release build, then the fault-path benchmark (scripts/bench.py)
# at --stack-depth 0, 8, 16 and 32.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in pagewatch fx_writer fx_baseline; do swift build -c release --product "$p" >/dev/null; done
python3 scripts/bench.py --bin "$(swift build -c release --show-bin-path)" "$@"
