#!/usr/bin/env python3
"""PageWatch benchmark: fault path, ptrace floor, sweeps, a python workload, peak RSS, real programs.

Sections (--sections, comma separated; all by default):

faults  The same writer (one byte into every page of a region, several
        rounds, PageWatch re-arming the whole region between rounds) run
        several ways: untracked, tracked by an in-process mprotect + SIGSEGV
        handler in C (the Boehm-GC-style baseline), and tracked by `pagewatch
        run` at each `--stack-depth` asked for (each fault records that many
        frames of the writer's stack; 0 turns attribution off), plus depth 0
        on the old two-stop fault path (PAGEWATCH_FAULT_PATH=two-stop). The
        writer's loop runs below `--frames` extra stack frames, so that every
        depth has frames to unwind. The fixtures time their own write loops,
        so process start-up and sweeps are not counted. Also `--backend uffd
        --stack-depth 0`: asynchronous userfaultfd write-protection, whose
        first write costs a minor fault the kernel resolves, no stop.
floor   A bare ptrace stop round trip, no PageWatch (fx_ptrace_floor): a
        traced child's `int3`, the tracer's waitpid and PTRACE_CONT; also
        with a blocking waitpid, and a real write fault on a read-only page
        (SIGSEGV stop, GETSIGINFO, GETREGS, SETREGS stepping over the store,
        CONT): that last one, a round trip plus the fault under PageWatch's
        default wait, is the floor in the targets. Also: the child's own
        mprotect after each stop (the floor of any mprotect tracker), and
        PageWatch's own design in C (a trampoline slot, the words in a shared
        page, PEEKUSER/POKEUSER of rip). Run interleaved with the faults
        section, same pages and rounds.
sweeps  Sweep time against the number of dirty pages, contiguous and
        scattered (every other page), in a fixed region (fx_sweep):
        PageWatch's sweep as the program sees it (a timed raise(SIGUSR2))
        beside an in-process loop re-arming the same pages with one mprotect
        per contiguous run; and under `--backend uffd`, where the sweep is
        one PAGEMAP_SCAN finding and re-protecting the written pages. Then
        sweep 1 of the region (all of it new to
        PageWatch), pagewatch/2 sorting it by /proc/PID/pagemap beside
        --schema 1, which does not.
python  Wall time of python3 running a fixed workload
        (scripts/bench_workload.py) untracked and under `pagewatch run
        --interval 100ms`, at --stack-depth 0 and at the default depth.
dump    The cost of --dump: fx_sweep's rounds (contiguous dirty pages,
        each round a timed sweep) under `pagewatch run` without and with
        --dump DIR, beside fx_sweep copying the same pages to a new file
        (a plain copy of the same bytes, write(2) from its own memory), in
        the same run, alternated. The dump's cost is the sweep's time with
        it minus without; per MiB dumped against the copy's per MiB.
rss     PageWatch's peak RSS (VmHWM of its /proc/PID/status, polled) while
        it tracks a 16 GiB region (fx_sweep, MAP_NORESERVE) in which 256 Ki
        pages (--full: 1 Mi, the target's case) are written.
programs
        Real programs untracked and under `pagewatch run`, at each
        --program-intervals and --program-depths (default 1s and 100ms, depth
        0 and the default), depth 0 on each --program-backends (ptrace and
        uffd): sort of a generated 50 MB text, the python
        workload, gcc -O2 -c of a generated 4,000-line C file (with
        --follow-forks, for cc1 and as), a JVM allocation workload and a
        Node.js one with worker threads (scripts/bench-programs/), and
        redis-server under redis-benchmark, requests per second before and
        while `pagewatch attach`ed. Sweeps and faults from the log, VMA counts
        printed by the workloads. --program-scale multiplies the sizes.

About 6 minutes once built; --full adds the 1 Mi-page sweeps and the 1 Mi-page
RSS case (about 13 minutes).

Prints medians with min and max over repeated runs, side by side, then the
performance targets with their measured ratios (met or NOT met: informative, not
the exit status). Exits 1 when the default depth costs `--max-ratio` times
depth 0 per tracked fault or more (faults section).
"""
import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_DEPTH = 16  # pagewatch's --stack-depth default
SECTIONS = ["faults", "floor", "sweeps", "dump", "python", "rss", "programs"]
SWEEP_BASE = 0x300000000000  # fx_sweep's region
PAGE = 4096
MIB = 1024 * 1024

# The performance targets (docs/performance.md).
FLOOR_TARGET = 1.3      # depth-0 fault <= 1.3x the bare ptrace stop round trip
DEPTH_TARGET = 2.0      # depth 16 <= 2x depth 0, per tracked fault
SWEEP_TARGET = 1.5      # re-arming 64 Ki scattered pages <= 1.5x the in-process loop
SWEEP_TARGET_PAGES = 65536
DUMP_TARGET = 2.0       # --dump's cost per MiB <= 2x a plain copy of the same bytes
DUMP_TARGET_PAGES = 65536
RSS_TARGET_MIB = 64     # tracker peak RSS for the 16 GiB case
SORT_TARGET_100MS = 5.0  # programs: tracked / untracked wall time at --stack-depth 0
SORT_TARGET_1S = 2.0
PYTHON_TARGET = 6.0      # at the default depth, --interval 100ms
PYTHON_VMA_TARGET = 1.5  # VMAs at the end, tracked / untracked
NODE_TARGET = 4.0        # --interval 100ms --stack-depth 0
UFFD_FAULT_TARGET_US = 2.0   # --backend uffd: cost per first write, microseconds
UFFD_SWEEP_TARGET = 1.0      # --backend uffd: a sweep of 64 Ki scattered pages <= the in-process mprotect loop
UFFD_SORT_TARGET_100MS = 1.5  # --backend uffd --stack-depth 0 --interval 100ms, tracked / untracked
UFFD_PYTHON_TARGET_100MS = 2.0
REDIS_TARGET = 0.7       # attached requests/s / untracked, --interval 1s


def fail(message):
    sys.exit(f"bench: {message}")


def rounds_ns(cmd, env=None):
    """Per-round times (ns) that a fixture printed on stderr ("round <r> <n> <ns>")."""
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False, env=env)
    if p.returncode != 0 or p.stdout != "ok\n":
        fail(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[:400]}")
    return parse_counts(p.stderr, "round")


def parse_counts(text, key):
    """(n, value) of each "<key> <round> <n> <value>" line, or value of "<key> <round> <value>"."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == key:
            if key == "round" and len(f) == 4:
                out.append((int(f[2]), int(f[3])))
            elif key != "round" and len(f) == 3:
                out.append(int(f[2]))
    return out


class Run:
    """One process run with its output in files, optionally its peak RSS polled."""

    def __init__(self, cmd, env=None, timeout=None, poll_rss=False):
        self.cmd = cmd
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.monotonic()
            p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
            self.hwm_kib = 0
            self.timed_out = False
            while True:
                try:
                    p.wait(timeout=0.02)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if poll_rss:
                    self.hwm_kib = max(self.hwm_kib, vm_hwm_kib(p.pid))
                if timeout is not None and time.monotonic() - t0 > timeout:
                    # pagewatch run kills its program when it dies (PTRACE_O_EXITKILL).
                    p.send_signal(signal.SIGKILL)
                    p.wait()
                    self.timed_out = True
                    break
            self.wall = time.monotonic() - t0
            self.returncode = p.returncode
            out.seek(0)
            err.seek(0)
            self.stdout = out.read()
            self.stderr = err.read()

    def check(self, stdout="ok\n"):
        if self.timed_out:
            return
        if self.returncode != 0 or (stdout is not None and self.stdout != stdout):
            fail(f"{' '.join(self.cmd)} failed ({self.returncode}): {self.stderr.strip()[-400:]}")


def vm_hwm_kib(pid):
    """VmHWM (peak RSS) of a live process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def log_records(log, kind):
    with open(log) as f:
        for line in f:
            record = json.loads(line)
            if record.get("type") == kind:
                yield record


def deepest_stack(log):
    """The most frames any site of the log's sweeps has (None: no sites, attribution off)."""
    depths = [len(site.get("frames", [])) for r in log_records(log, "sweep") for site in r.get("sites", [])]
    return max(depths) if depths else None


def stats(values):
    return statistics.median(values), min(values), max(values)


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, load average {load}"


def map_count_limit():
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except OSError:
        return None


# ---------------------------------------------------------------- sections


def fault_variants(a, logs):
    """(label, command, environment, tracked (depth, log, mode) or None, group) of the faults and floor sections."""
    writer = [f"{a.bin}/fx_writer", str(a.pages), str(a.rounds), str(a.frames)]
    variants = []
    if "faults" in a.sections:
        variants += [
            ("untracked writes", writer, None, None, "faults"),
            ("in-process mprotect+SIGSEGV (baseline)", [f"{a.bin}/fx_baseline", str(a.pages), str(a.rounds)],
             None, None, "faults"),
        ]
        runs = [(d, None) for d in a.depths] + ([(0, "two-stop")] if not a.no_two_stop else []) + [(0, "no-idle-poll")]
        runs += [(0, "uffd")]
        for depth, mode in runs:
            label = f"pagewatch run --stack-depth {depth}" + (" (default)" if depth == DEFAULT_DEPTH else "")
            env, extra = None, []
            if mode == "two-stop":
                label = f"pagewatch run --stack-depth {depth}, two-stop path"
                env = dict(os.environ, PAGEWATCH_FAULT_PATH="two-stop")
            elif mode == "no-idle-poll":
                label = f"pagewatch run --stack-depth {depth} --no-idle-poll"
                extra = ["--no-idle-poll"]
            elif mode == "uffd":
                label = f"pagewatch run --stack-depth {depth} --backend uffd"
                extra = ["--backend", "uffd"]
            # The log is written at sweeps, which are not timed; it shows how deep the stacks really were.
            log = os.path.join(logs, f"depth-{depth}{'-' + mode if mode else ''}.jsonl")
            cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0",
                   "--track", "0x180000000000-0x190000000000", "--stack-depth", str(depth), "--output", log] + extra + ["--"] + writer
            if mode != "uffd":
                # --stack-depth 0 alone is `auto`, which takes uffd where the kernel offers it.
                cmd[cmd.index("--output"):cmd.index("--output")] = ["--backend", "ptrace"]
            variants.append((label, cmd, env, (depth, log, mode), "faults"))
    if "floor" in a.sections:
        floor = [f"{a.bin}/fx_ptrace_floor", str(a.pages), str(a.rounds)]
        variants += [
            ("ptrace stop round trip: int3, CONT", floor + ["int3", "spin"], None, None, "floor"),
            ("  the same, blocking waitpid (no spin)", floor + ["int3", "block"], None, None, "floor"),
            ("ptrace SIGSEGV stop: write to PROT_READ (floor)", floor + ["segv", "spin", "idle-poll"], None, None, "floor"),
            ("  + the program's own mprotect (floor of mprotect)", floor + ["segv-mprotect", "spin", "idle-poll"], None, None,
             "floor"),
            ("  + mprotect through a slot (PageWatch's design in C)", floor + ["trampoline", "spin", "idle-poll"], None, None,
             "floor"),
            ("  the same, idle CPUs not kept polling", floor + ["segv", "spin"], None, None, "floor"),
            ("  the same, the tracer following the child's CPU", floor + ["segv", "follow"], None, None, "floor"),
        ]
    return variants


def run_faults_and_floor(a, results):
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    variants = fault_variants(a, logs)
    per_page_us = {name: [] for name, *_ in variants}
    for _ in range(a.runs):
        for name, cmd, env, tracked, _group in variants:  # interleaved, so drift hits all of them alike
            samples = [ns / pages / 1000.0 for pages, ns in rounds_ns(cmd, env)]
            per_page_us[name].append(statistics.median(samples))
            if tracked:
                depth, log, _mode = tracked
                deepest = deepest_stack(log)
                # Depth 0 records no sites; any other depth must find that many frames above the loop.
                if deepest != (None if depth == 0 else depth):
                    fail(f"--stack-depth {depth} recorded stacks of {deepest} frames")
                os.remove(log)
    os.rmdir(logs)

    exit_status = 0
    faults = [v for v in variants if v[4] == "faults"]
    if faults:
        print(f"Fault path: {a.pages} pages x {a.rounds} rounds, {a.runs} runs, writes {a.frames} frames deep, "
              f"median of per-run medians (min..max), microseconds per page written")
        print(f"{'':46} {'median':>9} {'min':>9} {'max':>9} {'vs baseline':>12}")
        base = statistics.median(per_page_us[faults[1][0]])
        for name, *_ in faults:
            m, lo, hi = stats(per_page_us[name])
            print(f"{name:46} {m:9.2f} {lo:9.2f} {hi:9.2f} {m / base:11.1f}x")

        untracked = statistics.median(per_page_us[faults[0][0]])
        cost = {}
        print(f"\npagewatch cost per tracked fault, minus the untracked write (baseline: {base - untracked:.2f} us per fault):")
        for name, _, env, tracked, _ in faults[2:]:
            depth, _log, mode = tracked
            c = statistics.median(per_page_us[name]) - untracked
            if mode is None:
                cost[depth] = c
                # Per run (the variants of a run are measured one after the
                # other), for the paired ratios of the targets.
                results.setdefault("cost_runs", {})[depth] = [
                    t - u for t, u in zip(per_page_us[name], per_page_us[faults[0][0]])]
                print(f"  --stack-depth {depth:<3}                {c:9.2f} us")
            elif mode == "two-stop":
                results["two_stop"] = c
                print(f"  --stack-depth {depth:<3} two-stop path  {c:9.2f} us")
            elif mode == "uffd":
                results["uffd_fault"] = c
                print(f"  --stack-depth {depth:<3} --backend uffd {c:9.2f} us")
            else:
                results["no_idle_poll"] = c
                print(f"  --stack-depth {depth:<3} --no-idle-poll {c:9.2f} us")
        results["cost"] = cost
        if 0 in cost and "two_stop" in results:
            print(f"  one-stop fault path at depth 0: {results['two_stop'] / cost[0]:.2f}x faster than two-stop "
                  f"({results['two_stop'] - cost[0]:.2f} us less per fault)")
        if 0 in cost and "no_idle_poll" in results:
            print(f"  idle CPUs kept polling (--idle-poll, the default) at depth 0: {results['no_idle_poll'] / cost[0]:.2f}x "
                  f"faster than without ({results['no_idle_poll'] - cost[0]:.2f} us less per fault)")

        if 0 in cost and DEFAULT_DEPTH in cost:
            ratio = cost[DEFAULT_DEPTH] / cost[0]
            verdict = "ok" if ratio < a.max_ratio else "TOO SLOW"
            print(f"\ndepth {DEFAULT_DEPTH} / depth 0: {ratio:.2f}x per tracked fault "
                  f"(limit {a.max_ratio:g}x): {verdict}")
            if ratio >= a.max_ratio:
                exit_status = 1

    floor = [v for v in variants if v[4] == "floor"]
    if floor:
        if faults:
            print()
        print(f"Ptrace floor (fx_ptrace_floor, no PageWatch): {a.pages} stops x {a.rounds} rounds, {a.runs} runs, "
              f"median of per-run medians (min..max), microseconds per stop, timed in the traced child")
        d0 = results.get("cost", {}).get(0)
        print(f"{'':46} {'median':>9} {'min':>9} {'max':>9} {'depth 0 / this':>15}")
        for name, *_ in floor:
            m, lo, hi = stats(per_page_us[name])
            ratio = f"{d0 / m:14.2f}x" if d0 is not None else f"{'-':>15}"
            print(f"{name:46} {m:9.2f} {lo:9.2f} {hi:9.2f} {ratio}")
        # The floor in the targets: a bare stop round
        # trip plus the fault, under PageWatch's scheduling (its default
        # 50 us spin): the SIGSEGV stop line. The bare int3 round trips are
        # shown beside it.
        spin, block, segv = (statistics.median(per_page_us[floor[i][0]]) for i in (0, 1, 2))
        results["floor"] = segv
        results["floor_runs"] = per_page_us[floor[2][0]]
        results["slot_floor"] = statistics.median(per_page_us[floor[4][0]])
        results["slot_floor_runs"] = per_page_us[floor[4][0]]
        results["int3_floor"] = min(spin, block)
        results["floor_wait"] = "spinning" if spin <= block else "blocking"
        print("  int3, CONT: the tracer waits for the SIGTRAP stop (polling WNOHANG for 50 us before blocking, as "
              "PageWatch does, or blocking at once) and resumes it with the signal suppressed")
        print("  SIGSEGV stop: + PTRACE_GETSIGINFO, GETREGS, SETREGS (steps over the store; the page stays read-only)")
        print("  + mprotect: the child makes each page writable itself after the stop, as a tracker's un-arming in the "
              "program must (the floor of any mprotect-based tracker)")
        print("  through a slot: the tracer sends the child through a trampoline slot that runs the mprotect, as "
              "PageWatch's one-stop path does, with the fewest requests (GETSIGINFO, PEEKUSER rip, the slot's words "
              "stored into a page tracer and child share, POKEUSER rip, CONT): PageWatch's design without PageWatch")
        print("  idle-poll: a CPU latency request of 0 held (/dev/cpu_dma_latency), as pagewatch --idle-poll (the default) "
              "does: idle CPUs poll instead of halting")
        print("  following: the tracer moves itself (sched_setaffinity) to the CPU the child last ran on, every 64 "
              "stops, and spins; the child's affinity is never touched")
        print(f"  the floor in the targets: the SIGSEGV stop ({results['floor']:.2f} us), a bare round trip plus "
              f"the fault under PageWatch's default scheduling; the bare int3 round trip alone: "
              f"{results['int3_floor']:.2f} us ({results['floor_wait']})")
    return exit_status


def sweep_rounds(a, dirty):
    if a.sweep_rounds is not None:
        return a.sweep_rounds
    return 3 if dirty <= 65536 else 1


def sweep_runs(a, dirty):
    return a.sweep_runs if dirty <= 65536 else a.sweep_runs_large


def run_sweeps(a, results):
    region = a.sweep_region_pages
    track = f"0x{SWEEP_BASE:x}-0x{SWEEP_BASE + region * PAGE:x}"
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    cases = [(n, pattern) for n in a.sweep_sizes for pattern in ("contiguous", "scattered")]
    data = {c: {"pw": [], "inproc": [], "pw_vmas": [], "in_vmas": [], "fallbacks": [], "pw_fault": [],
                "in_fault": [], "extra": [], "rss": [], "uffd": [], "uffd_fault": []} for c in cases}
    for run in range(max(a.sweep_runs, a.sweep_runs_large)):
        for n, pattern in cases:
            if run >= sweep_runs(a, n):
                continue
            d = data[(n, pattern)]
            t0 = time.monotonic()
            rounds = sweep_rounds(a, n)
            args = [pattern, str(n), str(rounds), str(region)]
            r = Run([f"{a.bin}/fx_sweep", "inproc"] + args)
            r.check()
            d["inproc"] += [ns / 1e6 for _, ns in parse_counts(r.stderr, "round")]
            d["in_vmas"] += parse_counts(r.stderr, "vmas")
            d["fallbacks"] += parse_counts(r.stderr, "fallbacks")
            d["in_fault"] += [ns / n / 1000 for ns in parse_counts(r.stderr, "writes")]

            log = os.path.join(logs, "sweep.jsonl")
            cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0", "--track", track,
                   "--stack-depth", str(a.sweep_depth), "--backend", "ptrace", "--output", log, "--",
                   f"{a.bin}/fx_sweep", "tracked"] + args
            r = Run(cmd, poll_rss=True)
            r.check()
            d["pw"] += [ns / 1e6 for _, ns in parse_counts(r.stderr, "round")]
            d["pw_vmas"] += parse_counts(r.stderr, "vmas")
            d["pw_fault"] += [ns / n / 1000 for ns in parse_counts(r.stderr, "writes")]
            d["rss"].append(r.hwm_kib / 1024)
            # Sweep 1 takes the region in; each round's sweep must report exactly its pages.
            sweeps = [s for s in log_records(log, "sweep") if s["reason"] == "signal"][1:]
            if len(sweeps) != rounds or any(s["dirty_pages"] != n for s in sweeps):
                fail(f"fx_sweep {' '.join(args)}: sweeps reported {[s['dirty_pages'] for s in sweeps]} pages")
            d["extra"] += [s["faults"] - n for s in sweeps]
            os.remove(log)

            # The same rounds with the region write-protected by userfaultfd.
            cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0", "--track", track,
                   "--stack-depth", "0", "--backend", "uffd", "--output", log, "--",
                   f"{a.bin}/fx_sweep", "tracked"] + args
            r = Run(cmd)
            r.check()
            d["uffd"] += [ns / 1e6 for _, ns in parse_counts(r.stderr, "round")]
            d["uffd_fault"] += [ns / n / 1000 for ns in parse_counts(r.stderr, "writes")]
            sweeps = [s for s in log_records(log, "sweep") if s["reason"] == "signal"][1:]
            if len(sweeps) != rounds or any(s["dirty_pages"] != n for s in sweeps):
                fail(f"fx_sweep {' '.join(args)} (uffd): sweeps reported {[s['dirty_pages'] for s in sweeps]} pages")
            os.remove(log)
            if n > 65536:
                results["large_sweeps_s"] = results.get("large_sweeps_s", 0) + time.monotonic() - t0
    os.rmdir(logs)

    print(f"Sweeps: region of {region} pages ({region * PAGE / 2**30:g} GiB, MAP_NORESERVE), "
          f"{', '.join(f'{sweep_runs(a, n)} run(s) x {sweep_rounds(a, n)} round(s) at {n}' for n in a.sweep_sizes)}; "
          f"median (min..max) over every round, milliseconds to re-arm the dirty pages")
    print(f"pagewatch: --stack-depth {a.sweep_depth}, a timed raise(SIGUSR2) (stop, /proc/PID/maps, re-arming, "
          f"the sweep's log record); in-process: one mprotect per contiguous run of dirty pages")
    print(f"{'dirty pages':>11}  {'pattern':10}   {'pagewatch':>9} {'min':>9} {'max':>9}   "
          f"{'in-process':>10} {'min':>8} {'max':>8}   {'ratio':>8}   {'uffd':>8} {'min':>8} {'max':>8} {'ratio':>8}")
    for n, pattern in cases:
        d = data[(n, pattern)]
        pm, plo, phi = stats(d["pw"])
        im, ilo, ihi = stats(d["inproc"])
        um, ulo, uhi = stats(d["uffd"])
        print(f"{n:11}  {pattern:10}   {pm:9.2f} {plo:9.2f} {phi:9.2f}   {im:10.2f} {ilo:8.2f} {ihi:8.2f}   "
              f"{pm / im:7.1f}x   {um:8.2f} {ulo:8.2f} {uhi:8.2f} {um / im:7.2f}x")
        results.setdefault("sweeps", {})[(n, pattern)] = (pm, im)
        results.setdefault("uffd_sweeps", {})[(n, pattern)] = (um, im)
    limit = map_count_limit()
    print(f"\nWhat happened (medians over the rounds; vm.max_map_count = {limit}): the region's VMAs just before "
          f"re-arming, in-process ENOMEM fallbacks (the handler re-armed the whole region, as PageWatch does), "
          f"PageWatch's extra faults (a page whose un-arming failed with ENOMEM faults again and takes the slow path), "
          f"microseconds per first write while dirtying, PageWatch's peak RSS")
    print(f"{'dirty pages':>11}  {'pattern':10}   {'VMAs pw':>8} {'in-proc':>8}   {'fallbacks':>9} {'extra faults':>12}   "
          f"{'us/fault pw':>11} {'in-proc':>8} {'uffd':>8}   {'pw RSS MiB':>10}")
    for n, pattern in cases:
        d = data[(n, pattern)]
        med = statistics.median
        print(f"{n:11}  {pattern:10}   {med(d['pw_vmas']):8.0f} {med(d['in_vmas']):8.0f}   "
              f"{med(d['fallbacks']):9.0f} {med(d['extra']):12.0f}   {med(d['pw_fault']):11.2f} "
              f"{med(d['in_fault']):8.2f} {med(d['uffd_fault']):8.2f}   {max(d['rss']):10.1f}")
    run_first_sweeps(a, results)


def run_dump(a, results):
    """--dump's cost per sweep against the same sweeps without it and a plain copy of the same bytes."""
    rounds = 3
    region = max(a.dump_sizes) * 2
    track = f"0x{SWEEP_BASE:x}-0x{SWEEP_BASE + region * PAGE:x}"
    # In memory (tmpfs) where there is one: the disk's writeback, shared with
    # everything else on the machine, would swamp what is measured.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    work = tempfile.mkdtemp(prefix="pagewatch-bench-dump-", dir=shm)
    data = {(n, v): [] for n in a.dump_sizes for v in ("plain", "dump", "copy")}
    for run in range(a.dump_runs):
        for n in a.dump_sizes:
            args = ["contiguous", str(n), str(rounds), str(region)]
            for variant in ("plain", "dump", "copy"):
                image = os.path.join(work, "image")
                if variant == "copy":
                    r = Run([f"{a.bin}/fx_sweep", "copy"] + args, env={**os.environ, "FX_COPY_DIR": work})
                else:
                    cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0", "--track", track,
                           "--stack-depth", "0", "--output", os.path.join(work, "log.jsonl"), "--force"]
                    cmd += ["--dump", image] if variant == "dump" else []
                    r = Run(cmd + ["--", f"{a.bin}/fx_sweep", "tracked"] + args)
                r.check()
                data[(n, variant)] += [ns / 1e6 for _, ns in parse_counts(r.stderr, "round")]
                for name in os.listdir(work):
                    path = os.path.join(work, name)
                    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.rmdir(work)
    print(f"--dump: fx_sweep, contiguous dirty pages, {a.dump_runs} run(s) x {rounds} round(s) in {work} "
          f"({'tmpfs' if shm else 'the temporary directory'}); medians, milliseconds per round: the sweep (a timed "
          f"raise(SIGUSR2)) without and with --dump, and fx_sweep writing the same pages to a new file")
    print(f"{'dirty pages':>11} {'MiB':>6}   {'sweep':>8} {'+ --dump':>9} {'copy':>8}   "
          f"{'dump ms/MiB':>11} {'copy ms/MiB':>11} {'ratio':>7}")
    for n in a.dump_sizes:
        plain, dump, copy = (statistics.median(data[(n, v)]) for v in ("plain", "dump", "copy"))
        mib = n * PAGE / MIB
        cost, per_copy = (dump - plain) / mib, copy / mib
        print(f"{n:11} {mib:6.0f}   {plain:8.2f} {dump:9.2f} {copy:8.2f}   {cost:11.3f} {per_copy:11.3f} "
              f"{cost / per_copy:6.2f}x")
        results.setdefault("dump", {})[n] = (cost, per_copy)


def run_first_sweeps(a, results):
    """Sweep 1 of fx_sweep's region: every page is new to PageWatch. pagewatch/2 (the default) sorts the
    pages it did not see written by /proc/PID/pagemap (those holding data in ranges, the rest in zero_ranges);
    --schema 1 reports them all in ranges, without reading pagemap. Alternated, same runs."""
    region = a.sweep_region_pages
    track = f"0x{SWEEP_BASE:x}-0x{SWEEP_BASE + region * PAGE:x}"
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    log = os.path.join(logs, "first.jsonl")
    schemas = [("2", "pagewatch/2 (default)"), ("1", "--schema 1")]
    data = {(n, s): {"ms": [], "data": [], "zero": [], "rss": []} for n in a.sweep_sizes for s, _ in schemas}
    for n in a.sweep_sizes:
        for _ in range(sweep_runs(a, n)):
            for schema, _ in schemas:
                cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0", "--track", track,
                       "--stack-depth", str(a.sweep_depth), "--schema", schema, "--output", log, "--",
                       f"{a.bin}/fx_sweep", "tracked", "scattered", str(n), "1", str(region)]
                r = Run(cmd, poll_rss=True)
                r.check()
                d = data[(n, schema)]
                d["ms"] += [ns / 1e6 for ns in parse_counts(r.stderr, "first")]
                first = next(s for s in log_records(log, "sweep") if s["seq"] == 1)
                d["data"].append(first["dirty_pages"])
                d["zero"].append(first.get("zero_pages", 0))
                d["rss"].append(r.hwm_kib / 1024)
                if first["dirty_pages"] + first.get("zero_pages", 0) != region:
                    fail(f"fx_sweep first sweep: {first['dirty_pages']} + {first.get('zero_pages', 0)} pages, "
                         f"not the region's {region}")
                os.remove(log)
    os.rmdir(logs)
    print(f"\nSweep 1 of the same region (every page new to PageWatch; {', '.join(f'{sweep_runs(a, n)} run(s) at {n}' for n in a.sweep_sizes)} "
          f"pages populated before tracking, scattered): milliseconds of the timed raise(SIGUSR2), pages in ranges "
          f"and zero_ranges, PageWatch's peak RSS; pagewatch/2 reads pagemap over the region, --schema 1 does not")
    print(f"{'populated':>11}  {'schema':22} {'ms':>9} {'min':>9} {'max':>9}   {'ranges':>9} {'zero_ranges':>11}   "
          f"{'pw RSS MiB':>10}")
    for n in a.sweep_sizes:
        for schema, label in schemas:
            d = data[(n, schema)]
            m, lo, hi = stats(d["ms"])
            print(f"{n:11}  {label:22} {m:9.2f} {lo:9.2f} {hi:9.2f}   {statistics.median(d['data']):9.0f} "
                  f"{statistics.median(d['zero']):11.0f}   {max(d['rss']):10.1f}")
            results.setdefault("first_sweeps", {})[(n, schema)] = m


def run_python(a, results):
    workload = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_workload.py")]
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    log = os.path.join(logs, "python.jsonl")
    pw = [f"{a.bin}/pagewatch", "run", "--interval", "100ms"]
    variants = [
        ("python3 untracked", workload, False),
        ("pagewatch run --interval 100ms --stack-depth 0", pw + ["--stack-depth", "0", "--backend", "ptrace", "--output",
                                                               log, "--"] + workload, True),
        ("  the same, --backend uffd", pw + ["--stack-depth", "0", "--backend", "uffd", "--output", log, "--"] + workload,
         True),
        (f"pagewatch run --interval 100ms (depth {DEFAULT_DEPTH})", pw + ["--output", log, "--"] + workload, True),
    ]
    wall = {name: [] for name, *_ in variants}
    extra = {name: {"sweeps": [], "faults": [], "rss": [], "timeouts": 0} for name, *_ in variants}
    expected = None
    for _ in range(a.python_runs):
        for name, cmd, tracked in variants:
            r = Run(cmd, timeout=a.python_timeout if tracked else None, poll_rss=tracked)
            if r.timed_out:
                extra[name]["timeouts"] += 1
                continue
            r.check(stdout=expected)
            expected = expected or r.stdout
            wall[name].append(r.wall)
            if tracked:
                sweeps = list(log_records(log, "sweep"))
                extra[name]["sweeps"].append(len(sweeps))
                extra[name]["faults"].append(sum(s["faults"] for s in sweeps))
                extra[name]["rss"].append(r.hwm_kib / 1024)
                os.remove(log)
    if os.path.exists(log):
        os.remove(log)
    os.rmdir(logs)

    print(f"Real program: {os.path.basename(sys.executable)} {platform.python_version()} running "
          f"scripts/bench_workload.py (a 200,000-entry dict, two sorts), {a.python_runs} runs, "
          f"median (min..max) wall seconds, process start included")
    print(f"{'':48} {'median':>8} {'min':>8} {'max':>8} {'vs untracked':>13}   {'sweeps':>6} {'faults':>7} {'pw RSS MiB':>11}")
    base = statistics.median(wall[variants[0][0]]) if wall[variants[0][0]] else None
    for name, _, tracked in variants:
        v = wall[name]
        e = extra[name]
        note = f"   ({e['timeouts']} run(s) killed after {a.python_timeout:g} s)" if e["timeouts"] else ""
        if not v:
            print(f"{name:48} did not finish within {a.python_timeout:g} s{note}")
            continue
        m, lo, hi = stats(v)
        more = (f"   {statistics.median(e['sweeps']):6.0f} {statistics.median(e['faults']):7.0f} "
                f"{max(e['rss']):11.1f}") if tracked else ""
        print(f"{name:48} {m:8.2f} {lo:8.2f} {hi:8.2f} {m / base:12.1f}x{more}{note}")


def run_rss(a, results):
    region = a.rss_region_pages
    track = f"0x{SWEEP_BASE:x}-0x{SWEEP_BASE + region * PAGE:x}"
    logs = tempfile.mkdtemp(prefix="pagewatch-bench-")
    log = os.path.join(logs, "rss.jsonl")
    peaks, walls = [], []
    for _ in range(a.rss_runs):
        cmd = [f"{a.bin}/pagewatch", "run", "--sweep-signal", "USR2", "--interval", "0", "--track", track,
               "--output", log, "--", f"{a.bin}/fx_sweep", "tracked", "contiguous", str(a.rss_dirty),
               str(a.rss_rounds), str(region)]
        r = Run(cmd, poll_rss=True)
        r.check()
        sweeps = list(log_records(log, "sweep"))
        if not any(s["dirty_pages"] == a.rss_dirty for s in sweeps):
            fail(f"rss: no sweep reported {a.rss_dirty} pages: {[s['dirty_pages'] for s in sweeps]}")
        peaks.append(r.hwm_kib / 1024)
        walls.append(r.wall)
        os.remove(log)
    os.rmdir(logs)
    m, lo, hi = stats(peaks)
    results["rss"] = m
    results["rss_region"] = f"{region * PAGE / 2**30:g} GiB region, {a.rss_dirty} pages written"
    print(f"Tracker peak RSS: pagewatch run --track {track} ({region * PAGE / 2**30:g} GiB, {region} pages, "
          f"default depth) -- fx_sweep writing {a.rss_dirty} contiguous pages ({a.rss_dirty * PAGE / 2**30:g} GiB "
          f"resident in the program) in {a.rss_rounds} round(s); {len(peaks)} run(s) of {statistics.median(walls):.0f} s; "
          f"{len(sweeps)} sweeps a run")
    print(f"  pagewatch VmHWM (polled every 20 ms): median {m:.1f} MiB (min {lo:.1f}, max {hi:.1f})")


# ---------------------------------------------------------------- programs

PROGRAMS = ["sort", "python", "gcc", "java", "node", "redis"]
PROGRAMS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-programs")


def write_sort_input(path, size):
    """`size` bytes of lines of random lowercase letters (mean 32 a line), the same every run."""
    import random
    rng = random.Random(6)
    # Each random byte becomes a letter, or a newline for 8 of the 256 values.
    table = bytes((10 if b < 8 else 97 + b % 26) for b in range(256))
    with open(path, "wb") as f:
        left = size
        while left > 0:
            chunk = min(left, 4 * MIB)
            f.write(rng.randbytes(chunk).translate(table))
            left -= chunk
        f.write(b"\n")


def write_c_source(path, lines):
    """A C file of about `lines` lines: small functions of loops and arithmetic, for gcc -O2."""
    with open(path, "w") as f:
        f.write("#include <stddef.h>\n\n")
        n = 0
        i = 0
        while n < lines:
            f.write(f"static unsigned f{i}(const unsigned *a, size_t n, unsigned k) {{\n"
                    f"    unsigned s = {i}u;\n"
                    f"    for (size_t j = 0; j < n; j++) {{\n"
                    f"        if ((a[j] ^ k) & {1 + i % 7}u)\n"
                    f"            s += a[j] * {3 + i % 11}u + (s >> {1 + i % 5});\n"
                    f"        else\n"
                    f"            s ^= a[j] << {i % 3};\n"
                    f"    }}\n"
                    f"    return s + {'f' + str(i - 1) + '(a, n / 2, s)' if i else 'k'};\n"
                    f"}}\n\n")
            n += 11
            i += 1
        f.write(f"unsigned entry(const unsigned *a, size_t n) {{ return f{i - 1}(a, n, 1u); }}\n")


def program_commands(a, work):
    """name -> (label, command, follow forks, prints its VMAs) of each program but redis."""
    scale = a.program_scale
    out = {}
    if "sort" in a.programs:
        size = int(50 * MIB * scale)
        src = os.path.join(work, "sort-input.txt")
        write_sort_input(src, size)
        out["sort"] = (f"sort {size / MIB:g} MB", ["sort", "-o", os.path.join(work, "sorted.txt"), src], False, False)
    if "python" in a.programs:
        out["python"] = ("python3 bench_workload.py",
                         [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_workload.py"),
                          f"{scale:g}"], False, True)
    if "gcc" in a.programs:
        lines = max(200, int(4000 * scale))
        src = os.path.join(work, "many_functions.c")
        write_c_source(src, lines)
        # gcc runs cc1 and as: --follow-forks tracks them, where the work is.
        out["gcc"] = (f"gcc -O2 -c, {lines} lines", ["gcc", "-O2", "-c", src, "-o", os.path.join(work, "many.o")],
                      True, False)
    if "java" in a.programs:
        classes = os.path.join(work, "java")
        subprocess.run(["javac", "-d", classes, os.path.join(PROGRAMS_DIR, "Alloc.java")], check=True)
        out["java"] = ("java Alloc (allocation)", ["java", "-Xmx256m", "-cp", classes, "Alloc", f"{scale:g}"], False, True)
    if "node" in a.programs:
        out["node"] = ("node workers.js (4 workers)", ["node", os.path.join(PROGRAMS_DIR, "workers.js"), f"{scale:g}"],
                       False, True)
    return out


def vmas_printed(stderr):
    """The last "vmas N" line a workload printed, or None."""
    found = [int(f[1]) for f in (line.split() for line in stderr.splitlines()) if len(f) == 2 and f[0] == "vmas"
             and f[1].isdigit()]
    return found[-1] if found else None


def log_totals(log):
    """(sweeps, faults, presumed pages) of a log: its sweep records, over every process of it; None when unreadable."""
    sweeps = faults = presumed = 0
    try:
        with open(log) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a timeout's kill
                if record.get("type") == "sweep":
                    sweeps += 1
                    faults += record.get("faults", 0)
                    presumed += record.get("presumed_pages", 0)
    except OSError:
        return None
    return sweeps, faults, presumed


def output_digest(cmd):
    """sha256 of the file a command writes with -o (sort's, gcc's), removed after; None without one."""
    if "-o" not in cmd:
        return None
    import hashlib
    path = cmd[cmd.index("-o") + 1]
    try:
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        os.remove(path)
        return digest
    except OSError:
        return "missing"


def depth_args(depth):
    return [] if depth == DEFAULT_DEPTH else ["--stack-depth", str(depth)]


def run_program(a, name, spec, logs):
    """Rows of one program (not redis): its untracked run, then one tracked run per interval and depth."""
    label, cmd, follow, prints_vmas = spec
    env = dict(os.environ, LC_ALL="C")
    # Twice, the faster kept: the first also reads the program and its files into the page cache.
    runs = []
    for _ in range(2):
        runs.append(Run(cmd, env=env))
        base_digest = output_digest(cmd)
    base = min(runs, key=lambda r: r.wall)
    if base.returncode != 0:
        print(f"{label}: untracked run failed ({base.returncode}): {base.stderr.strip()[-300:]}")
        return []
    base_vmas = vmas_printed(base.stderr) if prints_vmas else None
    rows = []
    for interval in a.program_intervals:
        for depth, backend in [(d, b) for d in a.program_depths for b in (a.program_backends if d == 0 else ["ptrace"])]:
            log = os.path.join(logs, f"{name}.jsonl")
            pw = [f"{a.bin}/pagewatch", "run", "--interval", interval, "--backend", backend] + depth_args(depth) + [
                "--output", log]
            r = Run(pw + (["--follow-forks"] if follow else []) + ["--"] + cmd, env=env, timeout=a.program_timeout)
            row = {"program": name, "label": label, "interval": interval, "depth": depth, "base": base.wall,
                   "base_vmas": base_vmas, "unit": "s", "backend": backend}
            digest = output_digest(cmd)
            if r.timed_out:
                row["tracked"] = "timeout"
            elif r.returncode != 0 or r.stdout != base.stdout or digest != base_digest:
                row["tracked"] = f"failed ({r.returncode})"
                row["why"] = r.stderr.strip()[-300:]
            else:
                row["tracked"] = r.wall
                row["vmas"] = vmas_printed(r.stderr) if prints_vmas else None
            row["totals"] = log_totals(log)
            if os.path.exists(log):
                os.remove(log)
            rows.append(row)
            print_program_row(row)
    return rows


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port):
    import socket
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def redis_rps(port, n, timeout):
    """{"SET": rps, "GET": rps} of one redis-benchmark run, or None on a timeout."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-q", "--csv", "-t", "set,get", "-n", str(n)]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    rps = {}
    for line in p.stdout.splitlines():
        f = [x.strip('"') for x in line.split(",")]
        if len(f) > 1 and f[0] in ("SET", "GET"):
            rps[f[0]] = float(f[1])
    if p.returncode != 0 or len(rps) != 2:
        fail(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout[-200:]} {p.stderr.strip()[-300:]}")
    return rps


def map_count(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return len(f.readlines())
    except OSError:
        return None


def wait_for_sweep(log, proc, timeout):
    """Until the attach's first sweep is in the log (the program is armed); False if pagewatch ended or time ran out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            return False
        if (log_totals(log) or (0, 0, 0))[0] > 0:
            return True
        time.sleep(0.05)
    return False


def run_redis(a, logs):
    """Rows of redis-server under redis-benchmark, before and while `pagewatch attach`ed, per interval and depth."""
    n = max(1000, int(100_000 * a.program_scale))
    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--loglevel", "warning"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        for _ in range(100):
            if redis_ping(port):
                break
            time.sleep(0.05)
        else:
            fail(f"redis-server on port {port} did not answer")
        label = f"redis-server (redis-benchmark -n {n})"
        for interval in a.program_intervals:
            for depth in a.program_depths:
                # Each attach paired with an untracked run right before it.
                base = redis_rps(port, n, a.program_timeout)
                base_vmas = map_count(server.pid)
                log = os.path.join(logs, "redis.jsonl")
                cmd = [f"{a.bin}/pagewatch", "attach", "--interval", interval, "--backend", "ptrace"] + depth_args(depth) + \
                      ["--output", log, str(server.pid)]
                with tempfile.TemporaryFile("w+") as err:
                    pw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
                    attached = wait_for_sweep(log, pw, 30)
                    tracked = redis_rps(port, n, a.program_timeout) if attached else None
                    vmas = map_count(server.pid)
                    pw.send_signal(signal.SIGINT)
                    try:
                        pw.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        pw.kill()
                        pw.wait()
                    err.seek(0)
                    why = err.read().strip()[-300:]
                if not redis_ping(port):
                    fail(f"redis-server did not survive pagewatch attach and detach: {why}")
                totals = log_totals(log)
                if os.path.exists(log):
                    os.remove(log)
                for test in ("SET", "GET"):
                    row = {"program": "redis", "label": label.replace(" (", f" {test} ("), "interval": interval, "depth": depth,
                           "base": base[test], "base_vmas": base_vmas, "unit": "rps", "totals": totals}
                    if not attached:
                        row["tracked"] = f"failed ({pw.returncode})"
                        row["why"] = why
                    elif tracked is None:
                        row["tracked"] = "timeout"
                    else:
                        row["tracked"] = tracked[test]
                        row["vmas"] = vmas
                    rows.append(row)
                    print_program_row(row)
    finally:
        server.terminate()
        server.wait()
    return rows


def print_program_row(row):
    t = row["tracked"]
    unit = row["unit"]
    base = f"{row['base']:10.2f}" if unit == "s" else f"{row['base']:10.0f}"
    if isinstance(t, str):
        tracked, ratio = f"{t:>10}", f"{'-':>8}"
    elif unit == "s":
        tracked, ratio = f"{t:10.2f}", f"{t / row['base']:7.2f}x"
    else:
        tracked, ratio = f"{t:10.0f}", f"{100 * t / row['base']:7.0f}%"
    sweeps, faults, presumed = row["totals"] if row.get("totals") else ("-", "-", "-")
    depth = f"{row['depth']}" + (" (default)" if row["depth"] == DEFAULT_DEPTH else "") + (
        " uffd" if row.get("backend") == "uffd" else "")
    vb = "-" if row.get("base_vmas") is None else row["base_vmas"]
    vt = "-" if row.get("vmas") is None else row["vmas"]
    print(f"{row['label']:44} {row['interval']:>8} {depth:>12} {base} {tracked} {ratio} {sweeps:>7} {faults:>9} "
          f"{vb:>7} {vt:>7} {presumed:>8}")
    if row.get("why"):
        print(f"    {row['why']}")
    sys.stdout.flush()


def run_programs(a, results):
    work = tempfile.mkdtemp(prefix="pagewatch-bench-programs-")
    try:
        print(f"Real programs (--program-scale {a.program_scale:g}): each untracked, then under `pagewatch run` "
              f"(redis-server: `pagewatch attach`ed, beside a run right before it) at each --interval and "
              f"--stack-depth; one run each (untracked: the faster of two): wall seconds, process start included (redis: requests per second, "
              f"and tracked as a share of untracked); sweeps and faults from the log; VMAs: the program's "
              f"/proc/self/maps lines at its end, untracked and tracked (pw) ('-': not measured); presumed: the "
              f"pages the sweeps reported presumed written (--presume auto), summed")
        print(f"{'program':44} {'interval':>8} {'depth':>12} {'untracked':>10} {'tracked':>10} {'ratio':>8} "
              f"{'sweeps':>7} {'faults':>9} {'VMAs':>7} {'VMAs pw':>7} {'presumed':>8}")
        sys.stdout.flush()
        specs = program_commands(a, work)
        rows = []
        for name in a.programs:
            if name == "redis":
                rows += run_redis(a, work)
            else:
                rows += run_program(a, name, specs[name], work)
        results["programs"] = rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


def program_targets(results):
    """The real programs' targets, each as a line of print_targets."""
    rows = results.get("programs")

    def find(program, interval, depth, backend="ptrace"):
        return [r for r in rows or [] if r["program"] == program and r["interval"] == interval and r["depth"] == depth
                and r.get("backend", "ptrace") == backend]

    def verdict(text, found, limit, higher_is_better=False, vmas_limit=None):
        if rows is None:
            print(f"  {text:62} not measured (section not run)")
            return
        if not found:
            print(f"  {text:62} not measured (not in --programs, --program-intervals or --program-depths)")
            return
        bad = [r["tracked"] for r in found if isinstance(r["tracked"], str)]
        if bad:
            print(f"  {text:62} {bad[0]}: NOT met")
            return
        if higher_is_better:
            share = min(r["tracked"] / r["base"] for r in found)
            ok = share >= limit
            print(f"  {text:62} {100 * share:7.0f}%  (target >= {100 * limit:g}%): {'met' if ok else 'NOT met'}")
            return
        r = found[0]
        ratio = r["tracked"] / r["base"]
        ok = ratio <= limit
        more = ""
        if vmas_limit is not None:
            if r.get("vmas") is None or not r.get("base_vmas"):
                ok, more = False, ", VMAs not measured"
            else:
                vr = r["vmas"] / r["base_vmas"]
                ok = ok and vr <= vmas_limit
                more = f", VMAs {r['vmas']} / {r['base_vmas']} = {vr:.2f}x (target <= {vmas_limit:g}x)"
        print(f"  {text:62} {ratio:8.2f}x (target <= {limit:g}x{more}): {'met' if ok else 'NOT met'}")

    verdict("sort, --interval 100ms --stack-depth 0 / untracked", find("sort", "100ms", 0), SORT_TARGET_100MS)
    verdict("sort, --interval 1s --stack-depth 0 / untracked", find("sort", "1s", 0), SORT_TARGET_1S)
    verdict(f"python workload, --interval 100ms (depth {DEFAULT_DEPTH}) / untracked",
            find("python", "100ms", DEFAULT_DEPTH), PYTHON_TARGET, vmas_limit=PYTHON_VMA_TARGET)
    verdict("node workers, --interval 100ms --stack-depth 0 / untracked", find("node", "100ms", 0), NODE_TARGET)
    verdict("redis-server attached, --interval 1s --stack-depth 0, req/s", find("redis", "1s", 0),
            REDIS_TARGET, higher_is_better=True)
    verdict("sort, --interval 100ms --stack-depth 0 --backend uffd / untracked",
            find("sort", "100ms", 0, "uffd"), UFFD_SORT_TARGET_100MS)
    verdict("python workload, --interval 100ms --stack-depth 0 --backend uffd / untracked",
            find("python", "100ms", 0, "uffd"), UFFD_PYTHON_TARGET_100MS)


def print_targets(a, results):
    print("Performance targets, each measured in this run:")

    def line(text, ratio, limit, unit="x"):
        if ratio is None:
            print(f"  {text:62} not measured (section not run)")
            return
        verdict = "met" if ratio <= limit else "NOT met"
        print(f"  {text:62} {ratio:8.2f}{unit} (target <= {limit:g}{unit}): {verdict}")

    cost = results.get("cost", {})
    floor = results.get("floor")
    runs = results.get("cost_runs", {})

    def paired(over, under):
        """The median of the per-run ratios: each run measured both, one
        right after the other, so the VM's drift between runs (often more
        than the difference measured) cancels out."""
        return statistics.median(o / u for o, u in zip(over, under)) if over and under else None

    print("  (ratios: the median of the ratios within each run; the ratio of the medians after it)")
    d0_floor = paired(runs.get(0), results.get("floor_runs"))
    line("depth-0 fault / ptrace SIGSEGV stop round trip (floor)", d0_floor, FLOOR_TARGET)
    if d0_floor is not None:
        print(f"  {'  ratio of the medians':62} {cost[0] / floor:8.2f}x")
    if floor and results.get("slot_floor"):
        slot = paired(results["slot_floor_runs"], results["floor_runs"])
        print(f"  {'(the same design in C, no PageWatch: through a slot / floor)':62} {slot:8.2f}x")
        if 0 in cost:
            print(f"  {'(depth-0 fault / the same design in C)':62} "
                  f"{paired(runs.get(0), results['slot_floor_runs']):8.2f}x")
    if 0 in cost and results.get("int3_floor"):
        print(f"  {'(depth-0 fault / bare int3 round trip, for reference)':62} {cost[0] / results['int3_floor']:8.2f}x")
    d16_d0 = paired(runs.get(DEFAULT_DEPTH), runs.get(0))
    line(f"depth-{DEFAULT_DEPTH} fault / depth-0 fault", d16_d0, DEPTH_TARGET)
    if d16_d0 is not None:
        print(f"  {'  ratio of the medians':62} {cost[DEFAULT_DEPTH] / cost[0]:8.2f}x")
    sw = results.get("sweeps", {}).get((SWEEP_TARGET_PAGES, "scattered"))
    line(f"re-arming {SWEEP_TARGET_PAGES} scattered pages / in-process mprotect loop",
         sw[0] / sw[1] if sw else None, SWEEP_TARGET)
    line("--backend uffd: cost per first write, microseconds", results.get("uffd_fault"), UFFD_FAULT_TARGET_US,
         unit=" us")
    usw = results.get("uffd_sweeps", {}).get((SWEEP_TARGET_PAGES, "scattered"))
    line(f"--backend uffd: a sweep of {SWEEP_TARGET_PAGES} scattered pages / in-process mprotect loop",
         usw[0] / usw[1] if usw else None, UFFD_SWEEP_TARGET)
    dump = results.get("dump", {}).get(DUMP_TARGET_PAGES)
    line(f"--dump of {DUMP_TARGET_PAGES} pages, cost per MiB / a plain copy's", dump[0] / dump[1] if dump else None,
         DUMP_TARGET)
    line(f"tracker peak RSS, {results.get('rss_region', '16 GiB region')}", results.get("rss"), RSS_TARGET_MIB,
         unit=" MiB")
    program_targets(results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="folder with pagewatch and the fixtures")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated, of {','.join(SECTIONS)}")
    ap.add_argument("--pages", type=int, default=4096, help="faults, floor: pages (stops) a round")
    ap.add_argument("--rounds", type=int, default=5, help="faults, floor: rounds a run")
    ap.add_argument("--runs", type=int, default=7, help="faults, floor: runs of each variant")
    ap.add_argument("--depths", default="0,8,16,32", help="faults: --stack-depth values, comma separated")
    ap.add_argument("--no-two-stop", action="store_true", help="faults: leave out the two-stop fault path")
    ap.add_argument("--frames", type=int, default=32, help="faults: extra stack frames above the writer's loop")
    ap.add_argument("--max-ratio", type=float, default=3.0,
                    help="faults: limit of (cost per fault at the default depth) / (at depth 0), the exit status")
    ap.add_argument("--full", action="store_true",
                    help="the targets' full sizes: --sweep-sizes 1024,65536,1048576 --rss-dirty 1048576 "
                         "(about 13 minutes instead of 6, 4 GiB resident in the programs)")
    ap.add_argument("--sweep-sizes", default=None,
                    help="sweeps: dirty pages, comma separated (default 1024,65536; 1048576 adds about 4 minutes)")
    ap.add_argument("--sweep-runs", type=int, default=2, help="sweeps: runs of each case up to 65536 dirty pages")
    ap.add_argument("--sweep-runs-large", type=int, default=1, help="sweeps: runs of each case above 65536 dirty pages")
    ap.add_argument("--sweep-rounds", type=int, default=None,
                    help="sweeps: rounds (sweeps) a run; default 3, 1 above 65536 dirty pages")
    ap.add_argument("--sweep-region-pages", type=int, default=2 * 1024 * 1024, help="sweeps: the region's size")
    ap.add_argument("--sweep-depth", type=int, default=0, help="sweeps: pagewatch's --stack-depth")
    ap.add_argument("--dump-sizes", default="1024,16384,65536", help="dump: dirty pages, comma separated")
    ap.add_argument("--dump-runs", type=int, default=3, help="dump: runs of each size")
    ap.add_argument("--python-runs", type=int, default=3)
    ap.add_argument("--python-timeout", type=float, default=120.0, help="python: seconds before a tracked run is killed")
    ap.add_argument("--rss-region-pages", type=int, default=4 * 1024 * 1024, help="rss: the region's size (16 GiB)")
    ap.add_argument("--rss-dirty", type=int, default=None,
                    help="rss: pages written a round (default 262144, 1 GiB; 1048576 adds about 2 minutes)")
    ap.add_argument("--rss-rounds", type=int, default=1)
    ap.add_argument("--rss-runs", type=int, default=1)
    ap.add_argument("--programs", default=",".join(PROGRAMS), help=f"programs: which, of {','.join(PROGRAMS)}")
    ap.add_argument("--program-intervals", default="1s,100ms", help="programs: pagewatch --interval values")
    ap.add_argument("--program-depths", default=f"0,{DEFAULT_DEPTH}",
                    help=f"programs: --stack-depth values (default: 0 and the default, {DEFAULT_DEPTH})")
    ap.add_argument("--program-backends", default="ptrace,uffd",
                    help="programs: --backend values for the depth-0 runs (deeper runs are ptrace)")
    ap.add_argument("--program-timeout", type=float, default=300.0,
                    help="programs: seconds before a tracked run is killed (printed as timeout)")
    ap.add_argument("--program-scale", type=float, default=1.0,
                    help="programs: multiplies the sizes (sort's 50 MB, gcc's 4,000 lines, the workloads' rounds, "
                         "redis-benchmark's 100,000 requests); 0.1 for a quick check")
    a = ap.parse_args()
    a.depths = [int(d) for d in a.depths.split(",")]
    if a.sweep_sizes is None:
        a.sweep_sizes = "1024,65536,1048576" if a.full else "1024,65536"
    if a.rss_dirty is None:
        a.rss_dirty = 1024 * 1024 if a.full else 256 * 1024
    a.sweep_sizes = [int(n) for n in a.sweep_sizes.split(",")]
    a.dump_sizes = [int(n) for n in a.dump_sizes.split(",")]
    a.sections = [s for s in a.sections.split(",") if s]
    a.programs = [p for p in a.programs.split(",") if p]
    a.program_backends = [b for b in a.program_backends.split(",") if b]
    if [p for p in a.programs if p not in PROGRAMS]:
        fail(f"unknown program(s) in --programs {','.join(a.programs)}; known: {', '.join(PROGRAMS)}")
    a.program_intervals = [i for i in a.program_intervals.split(",") if i]
    a.program_depths = [DEFAULT_DEPTH if d == "default" else int(d) for d in a.program_depths.split(",") if d]
    unknown = [s for s in a.sections if s not in SECTIONS]
    if unknown:
        fail(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")

    started = time.monotonic()
    print(f"PageWatch benchmark: {machine()}; sections {','.join(a.sections)}")
    results = {}
    exit_status = 0
    blocks = []
    if "faults" in a.sections or "floor" in a.sections:
        blocks.append(("faults+floor" if "faults" in a.sections and "floor" in a.sections
                       else "faults" if "faults" in a.sections else "floor", run_faults_and_floor))
    for name, block in (("sweeps", run_sweeps), ("dump", run_dump), ("python", run_python), ("rss", run_rss),
                        ("programs", run_programs)):
        if name in a.sections:
            blocks.append((name, block))
    took = []
    for name, block in blocks:
        print()
        sys.stdout.flush()
        t0 = time.monotonic()
        exit_status = block(a, results) or exit_status
        took.append(f"{name} {time.monotonic() - t0:.0f} s")
        sys.stdout.flush()
    print()
    print_targets(a, results)
    large = results.get("large_sweeps_s")
    print(f"\n{time.monotonic() - started:.0f} s ({', '.join(took)}"
          f"{f'; sweeps above 65536 pages {large:.0f} s' if large else ''}); at the end: {machine()}")
    sys.exit(exit_status)


if __name__ == "__main__":
    main()
