#!/usr/bin/env python3
"""PageWatch fault-path benchmark.

Runs the same writer (one byte into every page of a region, several rounds,
PageWatch re-arming the whole region between rounds) three ways in one run:
untracked, tracked by `pagewatch run`, and tracked by an in-process mprotect +
SIGSEGV handler in C (the Boehm-GC-style baseline). The fixtures time their own
write loops, so process start-up is not counted. Prints medians with min and
max over repeated runs, side by side.
"""
import argparse
import statistics
import subprocess
import sys


def rounds_ns(cmd):
    """Per-round write-loop times (ns) that the fixture printed on stderr."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if p.returncode != 0 or p.stdout != "ok\n":
        sys.exit(f"bench: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[:400]}")
    out = []
    for line in p.stderr.splitlines():
        f = line.split()
        if len(f) == 4 and f[0] == "round":
            out.append((int(f[2]), int(f[3])))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="folder with pagewatch, fx_writer, fx_baseline")
    ap.add_argument("--pages", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=7)
    a = ap.parse_args()

    writer = [f"{a.bin}/fx_writer", str(a.pages), str(a.rounds)]
    variants = [
        ("untracked writes", writer),
        ("in-process mprotect+SIGSEGV (baseline)", [f"{a.bin}/fx_baseline", str(a.pages), str(a.rounds)]),
        ("pagewatch run (ptrace)", [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0",
                                    "--track", "0x180000000000-0x190000000000", "--output", "/dev/null", "--"] + writer),
    ]
    per_page_us = {name: [] for name, _ in variants}
    for _ in range(a.runs):
        for name, cmd in variants:  # interleaved, so drift hits all three alike
            samples = [ns / pages / 1000.0 for pages, ns in rounds_ns(cmd)]
            per_page_us[name].append(statistics.median(samples))

    print(f"PageWatch fault-path benchmark: {a.pages} pages x {a.rounds} rounds, {a.runs} runs, "
          f"median of per-run medians (min..max), microseconds per page written")
    print(f"{'':42} {'median':>9} {'min':>9} {'max':>9} {'vs baseline':>12}")
    base = statistics.median(per_page_us[variants[1][0]])
    for name, _ in variants:
        v = per_page_us[name]
        m = statistics.median(v)
        print(f"{name:42} {m:9.2f} {min(v):9.2f} {max(v):9.2f} {m / base:11.1f}x")
    untracked = statistics.median(per_page_us[variants[0][0]])
    pw = statistics.median(per_page_us[variants[2][0]])
    print(f"\npagewatch cost per tracked fault: {pw - untracked:.2f} us "
          f"(baseline: {base - untracked:.2f} us per fault)")


if __name__ == "__main__":
    main()
