import Foundation
import Testing

/// VMAs that never merge again: a page first written while armed must not
/// leave a VMA behind that stays apart from its neighbours.
@Suite(.serialized) struct VMATests {
    /// `fx_vma_flat` writes each page of its region for the first time while
    /// it is armed, then counts its own VMAs (stderr `vmas N`). Tracked, the
    /// count stays within a few of the untracked one (PageWatch's scratch
    /// pages, the slots' data page, a split or two); the pages are exact.
    @Test func firstWritesWhileArmedLeaveTheVMACountFlat() throws {
        let program = Harness.fixture("fx_vma_flat")
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("vma_flat.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)

        func vmas(_ stderr: String) -> Int? {
            stderr.split(separator: "\n").compactMap { line -> Int? in
                line.hasPrefix("vmas ") ? Int(line.dropFirst(5)) : nil
            }.last
        }
        let before = try #require(vmas(untracked.stderr)), after = try #require(vmas(tracked.stderr))
        #expect(after <= before + 8, "tracked \(after) VMAs, untracked \(before)")
        // Nothing else on stderr: `--verify-contents` found no page changed unseen.
        #expect(tracked.stderr.split(separator: "\n").filter { !$0.hasPrefix("vmas ") }.isEmpty, "\(tracked.stderr)")

        let truth = try FixtureTruth(stdout: untracked.stdout)
        let records = try Harness.readLog(log)
        let pid = records.first?["pid"] as? Int
        let sweeps = records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
        let expected = truth.expectedSweeps
        #expect(sweeps.count == expected.count)
        for (k, (sweep, want)) in zip(sweeps, expected).enumerated() {
            let got = FixtureTruth.pages(in: want.region, of: sweep)
            #expect(
                got == want.pages,
                "sweep \(k + 1): extra \(got.subtracting(want.pages).sorted().prefix(20)), missing \(want.pages.subtracting(got).sorted().prefix(20))"
            )
        }
    }
}
