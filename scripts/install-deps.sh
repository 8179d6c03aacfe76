#!/usr/bin/env bash
# Installs what PageWatch needs that a fresh machine of our kind may lack.
# Idempotent: installs nothing when everything is present.
# `install-deps.sh bench` (`make bench`) also installs what the benchmark's
# real programs need beyond these; `install-deps.sh build` (`make install`)
# only what building PageWatch needs.
set -euo pipefail

# libunwind-ptrace for attribution (call stacks of writers), libdw (elfutils) for its file:line
# names, and pkg-config to find them; strace for the test that attaches PageWatch
# under another tracer; python3 for `make bench` (and to decode a screenshot in the
# report tests); chromium, headless, to render `pagewatch report --format html` in them;
# binutils for `strip` (the stripped-program attribution test); the runtimes the
# real-program tests run under PageWatch: a JVM, Go, Node.js, Rust, and liburing
# for the io_uring fixture; tmux, a terminal for the live status line's test.
packages=(libunwind-dev libdw-dev pkg-config strace python3 chromium binutils
          default-jdk-headless golang-go nodejs rustc liburing-dev tmux)
# `make bench`'s programs section: redis-server, attached under redis-benchmark
# (redis-tools), and gcc, which it compiles with; java and node come with the list above.
if [ "${1:-}" = bench ]; then
    packages+=(redis-server redis-tools gcc)
elif [ "${1:-}" = build ]; then
    packages=(libunwind-dev libdw-dev pkg-config)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null 2>&1; then
    if [ -x /opt/swift/usr/bin/swift ]; then
        echo "install-deps: swift is at /opt/swift/usr/bin; add it to PATH" >&2
    else
        echo "install-deps: no Swift toolchain found (Swift 6 is needed: https://www.swift.org/install/linux/)" >&2
    fi
    exit 1
fi

[ "${1:-}" != build ] || exit 0

# lld links fx_lld_callsites (the unwinder's test of lld's segment layout);
# Swift toolchains ship it beside swiftc, else Debian's package provides it.
swift_bin=$(dirname "$(readlink -f "$(command -v swift)")")
if [ ! -x "$swift_bin/ld.lld" ] && ! command -v ld.lld >/dev/null 2>&1; then
    echo "install-deps: installing lld" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends lld >/dev/null
fi
