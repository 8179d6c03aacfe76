#!/usr/bin/env bash
# `make bench`: release build, then the benchmark (scripts/bench.py): the fault
# path at --stack-depth 0, 8, 16 and 32 and on the two-stop path, the bare
# ptrace floor, sweeps, a python3 workload, the tracker's peak RSS and real
# programs (sort, gcc, python, a JVM, Node.js, redis-server attached).
# Arguments go to bench.py, e.g. `bash scripts/bench.sh --sections faults,floor`.
set -euo pipefail
cd "$(dirname "$0")/.."
plan=$(bash scripts/plan.sh)
for p in pagewatch fx_writer fx_baseline fx_ptrace_floor fx_sweep; do
    # shellcheck disable=SC2086 # empty or one option
    swift build -c release $plan --product "$p" >/dev/null
    plan=""
done
python3 scripts/bench.py --bin "$(swift build -c release --show-bin-path)" "$@"
