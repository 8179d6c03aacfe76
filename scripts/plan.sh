#!/usr/bin/env bash
# Package.swift reads fixtures/fixtures.txt and lists fixtures/, but
# SwiftPM plans the build again only when Package.swift itself changes:
# its manifest cache and the plan kept in .build would both go on
# without a fixture added to the list. Where the list or the folder
# differs from what the last plan saw, drop the plan and evaluate the
# manifest again. Prints the extra `swift build` option for the build
# right after.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.build/fixtures.planned
now=$( { cat fixtures/fixtures.txt; ls fixtures; } | cksum)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$now" ]; then
    exit 0
fi
rm -f .build/*.yaml .build/*/*/description.json
# The manifest cache (SwiftPM's default, shared by packages: only a cache)
# is dropped too, so that every later build sees the new list, not only
# the next one.
rm -rf "${XDG_CACHE_HOME:-$HOME/.cache}/org.swift.swiftpm/manifests"
mkdir -p .build
echo "$now" > "$stamp"
echo "--manifest-cache none"
