"""The benchmark's real-program workload (scripts/bench.py, sections python and
programs): build a dict of 200,000 entries, sort 200,000 random floats and sort
the dict's items by value: 0.4 to 0.9 s untracked on the benchmark machine,
depending on its load. Its output is fixed (a seeded generator), so tracked
runs are checked against the untracked one. An optional argument scales the
sizes (the programs section's --program-scale). Last, it prints the process's
VMA count on stderr ("vmas N"), for the programs section."""
import random
import sys

n = max(1000, int(200_000 * float(sys.argv[1]))) if len(sys.argv) > 1 else 200_000
rng = random.Random(6)
d = {i: str(i) for i in range(n)}
xs = [rng.random() for _ in range(n)]
xs.sort()
items = sorted(d.items(), key=lambda kv: kv[1])
print(len(d), round(xs[n // 2], 2), items[0][1], items[-1][1])
with open("/proc/self/maps") as maps:
    print("vmas", len(maps.readlines()), file=sys.stderr)
