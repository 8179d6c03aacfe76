import Foundation
import Testing

/// Presumed writes (`--presume`): pages rewritten sweep after sweep are left
/// writable and reported without a fault, named in the sweep's `presumed`.
@Suite(.serialized) struct PresumptionTests {
    /// The pages `fx_presume` must see reported presumed under `--presume
    /// always`, sweep by sweep (relative to its region), by the rule in
    /// `WritePresumption`: pages 0-7, written in phases 2 and 3, from sweep
    /// 3 on for 8 sweeps (4-11, whether written or not), then re-armed;
    /// page 0, written again in phase 12 after that check, presumed again
    /// at once (reported unseen by sweeps 13 and 14).
    static let presumedByAlways: [Int: Set<UInt64>] = {
        var out: [Int: Set<UInt64>] = [:]
        for sweep in 4...11 { out[sweep] = Set(0...7) }
        out[13] = [0]
        out[14] = [0]
        return out
    }()

    struct Case: CustomStringConvertible, Sendable {
        var mode: String
        var description: String { "--presume \(mode)" }
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

        let truth = try FixtureTruth(stdout: untracked.stdout)
        let records = try Harness.readLog(log)
        let pid = records.first?["pid"] as? Int
        let sweeps = records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
        let expected = truth.expectedSweeps
        try #require(sweeps.count == expected.count)
        for (k, (sweep, want)) in zip(sweeps, expected).enumerated() {
            let seq = k + 1
            let presumed = c.mode == "always" ? Self.presumedByAlways[seq] ?? [] : []
            let got = FixtureTruth.pages(in: want.region, of: sweep)
            let wanted = want.pages.union(presumed)
            #expect(
                got == wanted,
                "sweep \(seq): extra \(got.subtracting(wanted).sorted()), missing \(wanted.subtracting(got).sorted())")
            let named = FixtureTruth.pages(in: want.region, of: ["ranges": sweep["presumed"] ?? []])
            #expect(named == presumed, "sweep \(seq): presumed \(named.sorted()), expected \(presumed.sorted())")
            // (The fixture's stack and data, rewritten every phase, may be presumed too: the count is of all.)
            let all = FixtureTruth.pages(in: (0, UInt64.max), of: ["ranges": sweep["presumed"] ?? []])
            #expect((sweep["presumed_pages"] as? Int ?? 0) == all.count, "sweep \(seq)")
            // Presumed pages were left writable by the sweep before: reported again, unseen.
            let again = FixtureTruth.pages(in: want.region, of: ["ranges": sweep["reported_again"] ?? []])
            #expect(presumed.isSubset(of: again), "sweep \(seq)")
            // Writes to them are not seen: the sites name them `[presumed]`, not `[unseen]`.
            let sites = sweep["sites"] as? [[String: Any]] ?? []
            let site = sites.first { ($0["frames"] as? [[String: Any]])?.first?["function"] as? String == "[presumed]" }
            let bySite = FixtureTruth.pages(in: want.region, of: ["ranges": site?["ranges"] ?? []])
            #expect(bySite == presumed, "sweep \(seq): [presumed] site \(bySite.sorted())")
        }
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
