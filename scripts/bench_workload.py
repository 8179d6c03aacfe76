"""The benchmark's real-program workload (scripts/bench.py, section python):
build a dict of 200,000 entries, sort 200,000 random floats and sort the
dict's items by value: 0.4 to 0.9 s untracked on the benchmark machine,
depending on its load. Its output is fixed (a seeded generator), so tracked
runs are checked against the untracked one."""
import random

rng = random.Random(6)
d = {i: str(i) for i in range(200_000)}
xs = [rng.random() for _ in range(200_000)]
xs.sort()
items = sorted(d.items(), key=lambda kv: kv[1])
print(len(d), round(xs[100_000], 2), items[0][1], items[-1][1])
