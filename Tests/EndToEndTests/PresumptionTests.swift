import Foundation
import Testing

/// Presumed writes (`--presume`): pages rewritten sweep after sweep are left
/// writable and reported without a fault, named in the sweep's `presumed`.
@Suite(.serialized) struct PresumptionTests {
    /// The pages `fx_presume` must see reported presumed under `--presume
    /// always`, sweep by sweep (relative to its region), by the rules in
    /// `WritePresumption`: pages 0-7, written in phases 2 and 3, from sweep
    /// 3 on for 8 sweeps (4-11, whether written or not), then re-armed;
    /// page 0, written again in phase 12 after that check, presumed again
    /// at once (reported unseen by sweeps 13 and 14). Besides, every sweep
    /// presumes, so a write fault fills the gap between its page and the
    /// nearest writable one: page 8 at phase 3's write of 9 (0-7 written
    /// before it), 8-9 at phase 4's write of 10 (0-7 presumed), and from
    /// phase 5 on the pages between 7 and that phase's new page (15-21).
    static let presumedByAlways: [Int: Set<UInt64>] = {
        var out: [Int: Set<UInt64>] = [3: [8], 4: Set(0...9)]
        for sweep in 5...11 { out[sweep] = Set(0...UInt64(9 + sweep)) }
        out[13] = [0]
        out[14] = [0]
        return out
    }()

    /// The part of `presumedByAlways` filled at faults: armed at the sweep
    /// before, so not reported again.
    static let filledAtFaultsByAlways: [Int: Set<UInt64>] = {
        var out: [Int: Set<UInt64>] = [3: [8], 4: [8, 9]]
        for sweep in 5...11 { out[sweep] = Set(8...UInt64(9 + sweep)) }
        return out
    }()

    struct Case: CustomStringConvertible, Sendable {
        var mode: String
        var description: String { "--presume \(mode)" }
    }

    /// The program's sweeps against the fixture's truth: sweep K reports
    /// phase K's pages and `presumed(K)`, and its `presumed` field names
    /// exactly those. `more` checks further, given the sweep, the truth's
    /// region and pages, the pages presumed, those reported in the region
    /// and those named presumed there.
    static func checkSweeps(
        log: String, truth: FixtureTruth, presumed: (Int) -> Set<UInt64>,
        more: (
            _ seq: Int, _ sweep: [String: Any], _ want: (region: (start: UInt64, end: UInt64), pages: Set<UInt64>),
            _ presumed: Set<UInt64>, _ got: Set<UInt64>, _ named: Set<UInt64>
        ) -> Void
    ) throws {
        let records = try Harness.readLog(log)
        let pid = records.first?["pid"] as? Int
        let sweeps = records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
        let expected = truth.expectedSweeps
        try #require(sweeps.count == expected.count)
        for (k, (sweep, want)) in zip(sweeps, expected).enumerated() {
            let seq = k + 1
            let presumed = presumed(seq)
            let got = FixtureTruth.pages(in: want.region, of: sweep)
            let wanted = want.pages.union(presumed)
            #expect(
                got == wanted,
                "sweep \(seq): extra \(got.subtracting(wanted).sorted()), missing \(wanted.subtracting(got).sorted())")
            let named = FixtureTruth.pages(in: want.region, of: ["ranges": sweep["presumed"] ?? []])
            #expect(named == presumed, "sweep \(seq): presumed \(named.sorted()), expected \(presumed.sorted())")
            more(seq, sweep, want, presumed, got, named)
        }
    }

    @Test(arguments: [Case(mode: "always"), Case(mode: "never"), Case(mode: "auto")])
    func rewrittenPagesArePresumedOnlyWhenAsked(_ c: Case) throws {
        let program = Harness.fixture("fx_presume")
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("presume-\(c.mode).jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--verify-contents", "--presume", c.mode, "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        // No `missed` line: every page whose contents changed was reported.
        #expect(tracked.stderr.isEmpty, "\(tracked.stderr)")

        try Self.checkSweeps(
            log: log, truth: FixtureTruth(stdout: untracked.stdout),
            presumed: { c.mode == "always" ? Self.presumedByAlways[$0] ?? [] : [] }
        ) { seq, sweep, want, presumed, _, _ in
            // (The fixture's stack and data, rewritten every phase, may be presumed too: the count is of all.)
            let all = FixtureTruth.pages(in: (0, UInt64.max), of: ["ranges": sweep["presumed"] ?? []])
            #expect((sweep["presumed_pages"] as? Int ?? 0) == all.count, "sweep \(seq)")
            // Presumed pages were left writable by the sweep before:
            // reported again, unseen; gaps filled at faults were armed.
            let again = FixtureTruth.pages(in: want.region, of: ["ranges": sweep["reported_again"] ?? []])
            let filledAtFaults = c.mode == "always" ? Self.filledAtFaultsByAlways[seq] ?? [] : []
            #expect(presumed.subtracting(filledAtFaults) == again, "sweep \(seq)")
            // Writes to them are not seen: the sites name them `[presumed]`, not `[unseen]`.
            let sites = sweep["sites"] as? [[String: Any]] ?? []
            let site = sites.first { ($0["frames"] as? [[String: Any]])?.first?["function"] as? String == "[presumed]" }
            let bySite = FixtureTruth.pages(in: want.region, of: ["ranges": site?["ranges"] ?? []])
            #expect(bySite == presumed, "sweep \(seq): [presumed] site \(bySite.sorted())")
        }
    }

    /// `fx_presume_gaps` under `--presume always`: its pattern's pages,
    /// rewritten from phase 2 on, are presumed from sweep 3 on for 8 sweeps
    /// (4-11), and again after the check (sweep 13, the exit sweep), and so
    /// are the gaps of at most `WritePresumption.gapPages` pages between
    /// their runs (never written: reported only as presumed), not the gap
    /// of 80. In the phases where the pattern's pages are armed (2, 3 and
    /// 12, after the check) the write faults fill the same gaps (at most
    /// `WritePresumption.faultGapPages`): reported presumed, the pattern's
    /// pages not. Its region is then 4 VMAs (2 writable runs), not 17.
    @Test func smallGapsBetweenPresumedRunsArePresumedToo() throws {
        let program = Harness.fixture("fx_presume_gaps")
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("presume-gaps.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--verify-contents", "--presume", "always", "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        // No `missed` line: every page whose contents changed was reported.
        let lines = tracked.stderr.split(separator: "\n")
        #expect(lines.filter { !$0.hasPrefix("vmas ") }.isEmpty, "\(tracked.stderr)")

        let written: Set<UInt64> = [0, 1, 3, 4, 7, 8, 12, 13, 18, 19, 28, 29, 110, 111, 113, 114]
        let gaps: Set<UInt64> = Set([2, 5, 6, 112]).union(9...11).union(14...17).union(20...27)
        var presumedBySweep: [Int: Set<UInt64>] = [:]
        for sweep in [2, 3, 12] { presumedBySweep[sweep] = gaps }
        for sweep in [4, 5, 6, 7, 8, 9, 10, 11, 13] { presumedBySweep[sweep] = written.union(gaps) }

        try Self.checkSweeps(
            log: log, truth: FixtureTruth(stdout: untracked.stdout), presumed: { presumedBySweep[$0] ?? [] }
        ) { seq, _, _, _, got, named in
            // A gap page is never reported but as presumed (or as new, in sweep 1).
            if seq > 1 { #expect(got.intersection(gaps).isSubset(of: named), "sweep \(seq)") }
        }

        func vmas(_ stderr: String) -> (all: Int, region: Int)? {
            for line in stderr.split(separator: "\n") where line.hasPrefix("vmas ") {
                let f = line.split(separator: " ")
                if f.count == 4, let all = Int(f[1]), let region = Int(f[3]) { return (all, region) }
            }
            return nil
        }
        let before = try #require(vmas(untracked.stderr)), after = try #require(vmas(tracked.stderr))
        #expect(before.region == 1)
        // Writable 0-29 and 110-114 inside the armed region: 4 VMAs.
        #expect(after.region == 4, "\(tracked.stderr)")
        // PageWatch's own pages (3), the region's 3 more, the fixture's own
        // rewritten stack and data: a few more than untracked.
        #expect(after.all <= before.all + 12, "untracked \(before.all), tracked \(after.all)")
    }

    /// `pagewatch report` says how many pages were presumed.
    @Test func reportCountsPresumedPages() throws {
        let log = Harness.temporaryPath("presume-report.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--presume", "always", "--sweep-signal", "USR2", "--interval", "0",
            "--output", log, "--", Harness.fixture("fx_presume"),
        ])
        #expect(tracked.status == 0)
        let report = try Harness.run([Harness.pagewatch, "report", log])
        #expect(report.status == 0)
        // 8 pages in each of sweeps 4-11, 1 in sweeps 13 and 14; other
        // memory of the fixture (its stack, its data) may add more.
        let line = report.stdout.split(separator: "\n").first { $0.hasPrefix("presumed") }
        let count = line.flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) }
        #expect((count ?? 0) >= 66, "\(report.stdout)")
    }

    @Test func anUnknownModeIsRefused() throws {
        let r = try Harness.run([Harness.pagewatch, "run", "--presume", "sometimes", "--", "/bin/true"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("invalid --presume 'sometimes'"), "\(r.stderr)")
    }
}
