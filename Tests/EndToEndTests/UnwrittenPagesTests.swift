import Foundation
import Testing

/// Where tracking begins, a sweep reports what memory holds, not all that
/// is mapped (fx_many_threads: 200 threads with 8 MiB stacks of which each
/// uses a few pages).
@Suite(.serialized) struct UnwrittenPagesTests {
    /// The pages of `fields` of a sweep inside [lo, hi), counted.
    static func count(_ sweep: [String: Any], _ fields: [String], in lo: UInt64, _ hi: UInt64) -> UInt64 {
        var n: UInt64 = 0
        for field in fields {
            for pair in sweep[field] as? [[String]] ?? [] {
                let a = max(UInt64(pair[0].dropFirst(2), radix: 16)!, lo)
                let b = min(UInt64(pair[1].dropFirst(2), radix: 16)!, hi)
                if a < b { n += (b - a) / 4096 }
            }
        }
        return n
    }

    @Test(arguments: [[], ["--stack-depth", "0"]])
    func manyThreadsReportWhatTheyWroteNotTheirStacks(_ extra: [String]) throws {
        let program = Harness.fixture("fx_many_threads")
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("fx_many_threads.jsonl")
        let tracked = try Harness.run(
            [Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0", "--output", log] + extra + [
                "--", program,
            ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stderr == untracked.stderr)
        #expect(tracked.status == untracked.status)

        let truth = try FixtureTruth(stdout: untracked.stdout)
        let stacksLine = try #require(untracked.stdout.split(separator: "\n").first { $0.hasPrefix("stacks ") })
        let f = stacksLine.split(separator: " ")
        let (lo, hi) = (UInt64(f[1].dropFirst(2), radix: 16)!, UInt64(f[2].dropFirst(2), radix: 16)!)
        let threads = UInt64(f[3])!
        let stackPages = (hi - lo) / 4096  // each thread's guard page and stack

        let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
        let expected = truth.expectedSweeps
        #expect(sweeps.count == expected.count)
        for (k, sweep) in sweeps.enumerated() where k < expected.count {
            // The region exactly: written pages in ranges, the rest zero.
            let want = expected[k]
            #expect(FixtureTruth.pages(in: want.region, of: sweep) == want.pages, "sweep \(k + 1)")
            let zero = FixtureTruth.pages(in: want.region, of: sweep, fields: ["zero_ranges"])
            #expect(zero == truth.expectedUnseen[k]?.zero, "sweep \(k + 1): zero_ranges")
        }
        let first = try #require(sweeps.first)
        // Every page of the stacks is new at sweep 1: all reported, and
        // all but the few each thread used read as zeros.
        #expect(Self.count(first, ["ranges", "zero_ranges", "file_ranges"], in: lo, hi) == stackPages)
        let used = Self.count(first, ["ranges"], in: lo, hi)
        #expect(used >= threads && used <= 4 * threads, "\(used) stack pages in ranges")
        // The whole process: what sweep 1 calls data is a sliver of what it reports.
        let data = first["dirty_pages"] as? Int ?? 0
        let all = data + (first["zero_pages"] as? Int ?? 0) + (first["file_pages"] as? Int ?? 0)
        #expect(all > Int(stackPages) && data * 100 < all, "sweep 1: \(data) of \(all) pages in ranges")
    }
}
