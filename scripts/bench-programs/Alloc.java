// The benchmark's JVM workload (scripts/bench.py, section programs): rounds of
// allocating short-lived arrays into a sliding window that old ones fall out of,
// rewriting the survivors, so that the collector both frees and moves memory.
// Argument: the scale (1.0: about 270 MB allocated). Prints a checksum on stdout
// (fixed, so tracked runs are checked against the untracked one) and the
// process's VMA count on stderr ("vmas N") just before it exits.
import java.nio.file.Files;
import java.nio.file.Path;

public class Alloc {
    public static void main(String[] args) throws Exception {
        double scale = args.length > 0 ? Double.parseDouble(args[0]) : 1.0;
        int rounds = Math.max(1, (int) (60 * scale));
        int window = 4096;
        long[][] live = new long[window][];
        long sum = 0;
        long seed = 6;
        for (int r = 0; r < rounds; r++) {
            for (int i = 0; i < window; i++) {
                seed = seed * 6364136223846793005L + 1442695040888963407L;
                int len = 16 + (int) ((seed >>> 33) & 255);
                int slot = (int) ((seed >>> 17) % window);
                long[] a = new long[len];
                for (int k = 0; k < len; k++) a[k] = seed + k;
                live[slot] = a;
                long[] b = live[i];
                if (b != null) {
                    b[r % b.length] += r;
                    sum += b[0];
                }
            }
        }
        System.out.println(rounds + " " + sum);
        System.err.println("vmas " + Files.readAllLines(Path.of("/proc/self/maps")).size());
    }
}
