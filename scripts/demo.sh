#!/usr/bin/env bash
# Builds PageWatch and runs it on a bundled fixture that writes known pages
# in five phases, marking each with raise(SIGUSR2).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product pagewatch >/dev/null
swift build --product fx_phases >/dev/null
bin=$(swift build --show-bin-path)
echo "\$ pagewatch run --sweep-signal USR2 --interval 0 -- fx_phases"
echo "(the fixture prints the pages it wrote in each phase; pagewatch's summary follows on stderr)"
echo
"$bin/pagewatch" run --sweep-signal USR2 --interval 0 -- "$bin/fx_phases"
echo
echo "The same run as a JSON Lines log (schema pagewatch/2, docs/format.md), fixture output discarded:"
"$bin/pagewatch" run --sweep-signal USR2 --interval 0 --output /dev/stderr -- "$bin/fx_phases" 2>&1 >/dev/null \
    | cut -c1-160
