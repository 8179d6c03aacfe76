#!/usr/bin/env bash
# `make install`: a release pagewatch with the Swift runtime linked in
# statically (it runs where no Swift toolchain is; it still needs the
# libraries of scripts/install-deps.sh: libunwind, libdw), its man pages
# (swift-argument-parser's manual plugin) and bash, zsh and fish completions.
#
#   bash scripts/install.sh [PREFIX]     (default /usr/local; DESTDIR is honoured)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
root="${DESTDIR:-}$prefix"

# Its own build folder (the static link flags would rebuild .build/release,
# and a `swift test` running holds .build): the binary, and the manual
# generator of swift-argument-parser, which reads the binary's own help.
build=(swift build -c release --static-swift-stdlib --build-path .build/static)
"${build[@]}" --product pagewatch >/dev/null
"${build[@]}" --product generate-manual >/dev/null
dir="$("${build[@]}" --show-bin-path)"
install -D -m 755 "$dir/pagewatch" "$root/bin/pagewatch"

out=.build/static/share
rm -rf "$out" && mkdir -p "$out"
"$dir/generate-manual" "$dir/pagewatch" --multi-page --output-directory "$out" >/dev/null
# One page per command a user runs (not the internal guardian, not help).
for page in pagewatch pagewatch.run pagewatch.attach pagewatch.report pagewatch.image pagewatch.probe; do
    install -D -m 644 "$out/$page.1" "$root/share/man/man1/$page.1"
done

"$dir/pagewatch" --generate-completion-script bash > "$out/pagewatch.bash"
"$dir/pagewatch" --generate-completion-script zsh > "$out/_pagewatch"
"$dir/pagewatch" --generate-completion-script fish > "$out/pagewatch.fish"
install -D -m 644 "$out/pagewatch.bash" "$root/share/bash-completion/completions/pagewatch"
install -D -m 644 "$out/_pagewatch" "$root/share/zsh/site-functions/_pagewatch"
install -D -m 644 "$out/pagewatch.fish" "$root/share/fish/vendor_completions.d/pagewatch.fish"

echo "installed pagewatch $("$root/bin/pagewatch" --version) in $root: bin/pagewatch, share/man/man1/pagewatch*.1, completions"
