#!/usr/bin/env python3
"""PageWatch fault-path benchmark.

Runs the same writer (one byte into every page of a region, several rounds,
PageWatch re-arming the whole region between rounds) several ways in one run:
untracked, tracked by an in-process mprotect + SIGSEGV handler in C (the
Boehm-GC-style baseline), and tracked by `pagewatch run` at each
`--stack-depth` asked for (each fault records that many frames of the
writer's stack; 0 turns attribution off). The writer's loop runs below
`--frames` extra stack frames, so that every depth has frames to unwind.
The fixtures time their own write loops, so process start-up and sweeps are
not counted. Prints medians with min and max over repeated runs, side by
side, and checks that the default depth costs less than `--max-ratio` times
depth 0 per tracked fault (exit status 1 otherwise).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

DEFAULT_DEPTH = 16  # pagewatch's --stack-depth default


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


def deepest_stack(log):
    """The most frames any site of the log's sweeps has (None: no sites, attribution off)."""
    depths = []
    with open(log) as f:
        for line in f:
            record = json.loads(line)
            for site in record.get("sites", []) if record.get("type") == "sweep" else []:
                depths.append(len(site.get("frames", [])))
    return max(depths) if depths else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="folder with pagewatch, fx_writer, fx_baseline")
    ap.add_argument("--pages", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=7)  # 7 x 6 variants: about 2 minutes here
    ap.add_argument("--depths", default="0,8,16,32", help="--stack-depth values, comma separated")
    ap.add_argument("--frames", type=int, default=32, help="extra stack frames above the writer's loop")
    ap.add_argument("--max-ratio", type=float, default=3.0,
                    help="limit of (cost per fault at the default depth) / (at depth 0)")
    a = ap.parse_args()
    depths = [int(d) for d in a.depths.split(",")]

    writer = [f"{a.bin}/fx_writer", str(a.pages), str(a.rounds), str(a.frames)]
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    variants = [
        ("untracked writes", writer, None),
        ("in-process mprotect+SIGSEGV (baseline)", [f"{a.bin}/fx_baseline", str(a.pages), str(a.rounds)], None),
    ]
    for depth in depths:
        label = f"pagewatch run --stack-depth {depth}" + (" (default)" if depth == DEFAULT_DEPTH else "")
        # The log is written at sweeps, which are not timed; it shows how deep the stacks really were.
        log = os.path.join(logs, f"depth-{depth}.jsonl")
        cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0",
               "--track", "0x180000000000-0x190000000000", "--stack-depth", str(depth), "--output", log, "--"] + writer
        variants.append((label, cmd, (depth, log)))

    per_page_us = {name: [] for name, _, _ in variants}
    for _ in range(a.runs):
        for name, cmd, tracked in variants:  # interleaved, so drift hits all of them alike
            samples = [ns / pages / 1000.0 for pages, ns in rounds_ns(cmd)]
            per_page_us[name].append(statistics.median(samples))
            if tracked:
                depth, log = tracked
                deepest = deepest_stack(log)
                # Depth 0 records no sites; any other depth must find that many frames above the loop.
                if deepest != (None if depth == 0 else depth):
                    sys.exit(f"bench: --stack-depth {depth} recorded stacks of {deepest} frames")
                os.remove(log)
    os.rmdir(logs)

    print(f"PageWatch fault-path benchmark: {a.pages} pages x {a.rounds} rounds, {a.runs} runs, "
          f"writes {a.frames} frames deep, median of per-run medians (min..max), microseconds per page written")
    print(f"{'':42} {'median':>9} {'min':>9} {'max':>9} {'vs baseline':>12}")
    base = statistics.median(per_page_us[variants[1][0]])
    for name, _, _ in variants:
        v = per_page_us[name]
        m = statistics.median(v)
        print(f"{name:42} {m:9.2f} {min(v):9.2f} {max(v):9.2f} {m / base:11.1f}x")

    untracked = statistics.median(per_page_us[variants[0][0]])
    cost = {}
    print(f"\npagewatch cost per tracked fault (baseline: {base - untracked:.2f} us per fault):")
    for name, _, tracked in variants[2:]:
        depth = tracked[0]
        cost[depth] = statistics.median(per_page_us[name]) - untracked
        print(f"  --stack-depth {depth:<3} {cost[depth]:9.2f} us")

    if 0 in cost and DEFAULT_DEPTH in cost:
        ratio = cost[DEFAULT_DEPTH] / cost[0]
        verdict = "ok" if ratio < a.max_ratio else "TOO SLOW"
        print(f"\ndepth {DEFAULT_DEPTH} / depth 0: {ratio:.2f}x per tracked fault "
              f"(limit {a.max_ratio:g}x): {verdict}")
        if ratio >= a.max_ratio:
            sys.exit(1)


if __name__ == "__main__":
    main()
