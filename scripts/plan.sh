#!/usr/bin/env bash
# Package.swift reads fixtures/fixtures.txt and lists fixtures/, but
# SwiftPM plans the build again only when Package.swift itself changes:
# its manifest cache and the plan kept in .build would both go on
# without a fixture added to the list. Where the list or the folder
# differs from what the last plan saw, drop the plan and evaluate the
# manifest again. Prints the extra `swift build` option that needs.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.build/fixtures.planned
now=$( { cat fixtures/fixtures.txt; ls fixtures; } | cksum)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$now" ]; then
    exit 0
fi
rm -f .build/*.yaml .build/*/*/description.json
mkdir -p .build
echo "$now" > "$stamp"
echo "--manifest-cache none"
