// The benchmark's Node.js workload (scripts/bench.py, section programs): worker
// threads, each allocating arrays and rewriting them in rounds, while the main
// thread waits. Argument: the scale (1.0: 40 rounds of 200 arrays of 1,000 numbers a worker).
// Prints a checksum on stdout (fixed, so tracked runs are checked against the
// untracked one) and the process's VMA count on stderr ("vmas N") before it exits.
'use strict';
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const fs = require('fs');

if (isMainThread) {
  const scale = Number(process.argv[2] || '1');
  const workers = 4;
  const rounds = Math.max(1, Math.round(40 * scale));
  let done = 0;
  const sums = new Array(workers);
  for (let w = 0; w < workers; w++) {
    const worker = new Worker(__filename, { workerData: { w, rounds } });
    worker.on('message', (sum) => {
      sums[w] = sum;
      if (++done === workers) {
        console.log(rounds, sums.join(' '));
        const vmas = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l).length;
        process.stderr.write(`vmas ${vmas}\n`);
      }
    });
    worker.on('error', (e) => { console.error(e); process.exit(1); });
  }
} else {
  const { w, rounds } = workerData;
  let seed = 6 + w;
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648);
  const arrays = [];
  let sum = 0;
  for (let r = 0; r < rounds; r++) {
    // A new generation of arrays, plain (boxed or small-integer) and typed.
    for (let i = 0; i < 200; i++) {
      const a = new Array(1000);
      for (let k = 0; k < a.length; k++) a[k] = (next() & 1023) + k;
      arrays[(r * 200 + i) % 800] = a;
    }
    const t = new Float64Array(65536);
    for (let k = 0; k < t.length; k++) t[k] = k * r;
    // Rewrite the live ones.
    for (const a of arrays) {
      for (let k = 0; k < a.length; k += 7) a[k] = (a[k] * 3 + r) & 0xffff;
      sum = (sum + a[r % a.length]) % 1000000007;
    }
    sum = (sum + t[r]) % 1000000007;
  }
  parentPort.postMessage(sum);
}
