import Foundation
import Testing

/// Sweeps in a busy program (fx_steady_writers: four threads rewriting a
/// working set among a stream of memory calls, a stop always queued): the
/// interval sweeps come on time, each re-arms what was written (no page
/// reported again as if written), and `attach --duration` detaches on time.
/// Before, sweeps came only when no stop was queued (gaps as long as a
/// whole phase), and those taken while threads slept in page faults or
/// memory calls re-armed nothing: their pages were reported again, with
/// no fault, by every sweep after.
@Suite(.serialized) struct SteadyWritersTests {
    static let region: (start: UInt64, end: UInt64) = (0x3500_0000_0000, 0x3500_000c_0000)
    static let phaseMs = 800
    static let intervalMs = 50

    struct Sweep {
        var reason: String
        var timeNs: UInt64
        var pages: Set<UInt64>
        var reportedAgain: Set<UInt64>
        var faults: Int
        var rearmed: Bool
    }

    static func sweeps(_ records: [[String: Any]]) -> [Sweep] {
        records.filter { $0["type"] as? String == "sweep" }.map { r in
            let again = FixtureTruth.pages(in: region, of: ["ranges": r["reported_again"] as? [[String]] ?? []])
            #expect((r["reported_again_pages"] as? Int ?? 0) >= again.count)
            return Sweep(
                reason: r["reason"] as? String ?? "", timeNs: (r["time_ns"] as? NSNumber)?.uint64Value ?? 0,
                pages: FixtureTruth.pages(in: region, of: r), reportedAgain: again,
                faults: r["faults"] as? Int ?? -1, rearmed: r["rearmed"] as? Bool ?? true)
        }
    }

    @Test(arguments: ["0", "16"])
    func sweepsComeOnTimeAndReArmWhileThreadsWrite(stackDepth: String) throws {
        let program = Harness.fixture("fx_steady_writers")
        let untracked = try Harness.run([program, String(Self.phaseMs)])
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("steady-\(stackDepth).jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--track", "0x350000000000-0x3500000c0000",
            "--interval", "\(Self.intervalMs)ms", "--sweep-signal", "USR2",
            // Pages seen written, not presumed: what each sweep reports is measured here.
            "--presume", "never",
            "--stack-depth", stackDepth, "--output", log, "--", program, String(Self.phaseMs),
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(Harness.withoutStarvationWarning(tracked.stderr) == untracked.stderr)
        #expect(tracked.status == untracked.status)
        let truth = try FixtureTruth(stdout: untracked.stdout).segments[0].phases
        #expect(truth.count == 5)

        // The phases: each ends with its signal sweep; the exit sweep is phase 5.
        let records = try Harness.readLog(log)
        // At depth 0 `auto` may track this memory by userfaultfd: no fault is counted there.
        let countsFaults = (records.first?["backends"] as? [String: String])?["anonymous"] != "uffd"
        var phases: [[Sweep]] = [[]]
        for s in Self.sweeps(records) {
            phases[phases.count - 1].append(s)
            if s.reason == "signal" || s.reason == "exit" { phases.append([]) }
        }
        phases.removeLast()
        #expect(phases.count == 5)
        for (i, sweeps) in phases.enumerated() {
            let k = i + 1
            let want = truth[k] ?? []
            // Every sweep re-armed; what it reports, besides the pages the
            // sweep before left writable (marked), was written in its phase,
            // and together they are exactly the phase's pages.
            var written = Set<UInt64>()
            var freshPages = 0, faults = 0
            for (j, s) in sweeps.enumerated() {
                #expect(s.rearmed, "phase \(k) sweep \(j): re-armed nothing")
                let fresh = s.pages.subtracting(s.reportedAgain)
                #expect(
                    fresh.isSubset(of: want),
                    "phase \(k) sweep \(j): pages not written in the phase: \(fresh.subtracting(want).sorted().prefix(20))"
                )
                written.formUnion(fresh)
                freshPages += fresh.count
                faults += s.faults
            }
            // From phase 2 the region is armed: each page reported (and not
            // marked as reported again) was re-armed and faulted again. Over
            // the phase: a fault and its page can fall on either side of a
            // sweep, and now and then (1 run in 5) 1 to 3 pages come without
            // a fault of their own (not understood yet; docs/design.md, Known
            // limits). A sweep that re-armed nothing and did not say so
            // reports all 64 again with no fault.
            if k >= 2, countsFaults {
                #expect(freshPages <= faults + 4, "phase \(k): \(freshPages) pages, \(faults) faults")
            }
            #expect(written == want, "phase \(k): missing \(want.subtracting(written).sorted().prefix(20))")
            // Sweeps on time while the threads write: several interval
            // sweeps, none far apart (before: none in a whole phase).
            if (2...4).contains(k) {
                #expect(sweeps.filter { $0.reason == "interval" }.count >= 3, "phase \(k): \(sweeps.count) sweeps")
                let times = sweeps.map(\.timeNs)
                let gaps = zip(times.dropFirst(), times).map { Double($0 - $1) / 1e6 }
                #expect((gaps.max() ?? 0) < Double(Self.phaseMs) / 2, "phase \(k): sweep gaps \(gaps) ms")
            }
        }
    }

    /// A program PageWatch's work starves is told so, once: on stderr and
    /// in a `warning` record (here with the share set to 0, so that the
    /// warning comes whatever the machine's speed).
    @Test func aStarvedProgramIsWarnedOnceOnStderrAndInTheLog() throws {
        let program = Harness.fixture("fx_steady_writers")
        let untracked = try Harness.run([program, String(Self.phaseMs)])
        let log = Harness.temporaryPath("steady-starved.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--track", "0x350000000000-0x3500000c0000", "--interval", "20ms",
                "--sweep-signal", "USR2", "--presume", "never", "--stack-depth", "0", "--output", log, "--", program,
                String(Self.phaseMs),
            ], environment: ["PAGEWATCH_STARVATION_SHARE": "0"])
        #expect(tracked.status == untracked.status)
        #expect(tracked.stdout == untracked.stdout)
        let lines = tracked.stderr.split(separator: "\n").filter { $0.hasPrefix("pagewatch: warning: pid ") }
        #expect(lines.count == 1, "\(tracked.stderr)")
        #expect(lines.first?.contains("over the last 10 sweeps") == true, "\(tracked.stderr)")
        // Without presumption, the hint points at it.
        #expect(lines.first?.contains("--presume auto") == true, "\(tracked.stderr)")
        #expect(Harness.withoutStarvationWarning(tracked.stderr) == untracked.stderr)
        let warnings = try Harness.readLog(log).filter { $0["type"] as? String == "warning" }
        #expect(warnings.count == 1)
        #expect((warnings.first?["message"] as? String)?.hasPrefix("PageWatch's work took") == true)
    }

    /// `attach --duration 1s` on the busy program: back within a little
    /// more than the second, with interval sweeps throughout; the program
    /// finishes as without the tool.
    @Test func attachDurationDetachesOnTimeFromABusyProgram() throws {
        let program = Harness.fixture("fx_steady_writers")
        let untracked = try Background([program, "stdin"])
        #expect(untracked.waitFor("ready\n"))
        untracked.send("x")
        #expect(untracked.finish() == 0)
        let fixture = try Background([program, "stdin"])
        #expect(fixture.waitFor("ready\n"))
        for i in 0..<3 {
            let log = Harness.temporaryPath("steady-attach-\(i).jsonl")
            let started = Date()
            let r = try Harness.run([
                Harness.pagewatch, "attach", "--interval", "100ms", "--duration", "1s",
                "--stack-depth", "0", "--output", log, String(fixture.pid),
            ])
            let elapsed = Date().timeIntervalSince(started)
            #expect(r.status == 0, "attach \(i): \(r.stderr)")
            #expect(elapsed < 2.5, "attach \(i) took \(elapsed) s")
            let records = try Harness.readLog(log)
            #expect(records.last?["type"] as? String == "detach")
            let sweeps = Self.sweeps(records)
            #expect(sweeps.filter { $0.reason == "interval" }.count >= 5, "attach \(i): \(sweeps.map(\.reason))")
            let reportOnly = sweeps.filter { !$0.rearmed }.count
            #expect(reportOnly == 0, "attach \(i): \(reportOnly) sweeps re-armed nothing")
        }
        fixture.send("x")
        #expect(fixture.finish() == 0)
        #expect(fixture.stdout == untracked.stdout)
    }
}
