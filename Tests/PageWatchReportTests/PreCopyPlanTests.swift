import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchLog
@testable import PageWatchReport

/// The pre-copy model on a log whose answers are known: sweep 1 at 1 s
/// reports a 1,000-page image; sweeps 2 to 11, one second apart, each
/// report the same 100 pages and 10 pages of their own.
@Suite struct PreCopyPlanTests {
    static let pid: Int32 = 7
    static let second: UInt64 = 1_000_000_000
    static let base: UInt64 = 0x7000_0000

    static func pages(_ first: UInt64, _ count: UInt64) -> AddressRange {
        AddressRange(base + first * 4096, base + (first + count) * 4096)
    }

    static var log: ParsedLog {
        get throws {
            var records: [LogRecord] = [
                .start(pid: pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: 0),
                .sweep(
                    SweepRecord(
                        seq: 1, pid: pid, reason: .interval, timeNs: second, ranges: [pages(0, 1000)], faults: 0)),
            ]
            for seq in 2...11 {
                let own = pages(2000 + UInt64(seq) * 10, 10)
                records.append(
                    .sweep(
                        SweepRecord(
                            seq: seq, pid: pid, reason: seq == 11 ? .exit : .interval, timeNs: UInt64(seq) * second,
                            ranges: [pages(0, 100), own], faults: 110)))
            }
            records.append(.end(pid: pid, end: .exited(code: 0), sweeps: 11, faults: 1100, timeNs: 11 * second))
            let text = records.map { JSONLines.encode($0) + "\n" }.joined()
            return try LogReader.parse(Data(text.utf8), source: "precopy.jsonl")
        }
    }

    static func plan(pagesPerSecond: Double) throws -> PreCopyPlan {
        try PreCopyPlan(
            ProcessReport(log: log),
            .init(link: .init(bytesPerSecond: pagesPerSecond * 4096), downtimeTarget: 0.3))
    }

    @Test func ratesAndWorkingSets() throws {
        let plan = try Self.plan(pagesPerSecond: 100)
        #expect(plan.rates.map(\.seq) == Array(2...11))
        #expect(plan.rates.allSatisfy { $0.pagesPerSecond == 110 })
        #expect(plan.steadyRate == 110)
        // 1 s: one sweep per window. 5 s: five (the shared 100 pages once,
        // 10 of each), in the windows that end 5 s or more after sweep 1.
        // 30 s: the log is shorter.
        #expect(
            plan.workingSets == [
                .init(seconds: 1, medianPages: 110, maxPages: 110),
                .init(seconds: 5, medianPages: 150, maxPages: 150),
                .init(seconds: 30, medianPages: nil, maxPages: nil),
            ])
        #expect(
            plan.textLines()[2]
                == "  working set  1 s: 110 pages (0.4 MiB) median, 110 (0.4 MiB) at most; 5 s: 150 pages (0.6 MiB) median, 150 (0.6 MiB) at most; 30 s: n/a (n/a where the log has no window of whole sweep intervals that long after sweep 1)"
        )
    }

    /// 100 pages/s: the image takes 10 s, during which 195 pages are
    /// dirtied (the median of the two 10-s windows, 190 and 200); those
    /// take 1.95 s (two sweeps: 120 pages), those 1.2 s (one: 110), and
    /// then 110 again: no shrinking, stopped with 1.1 s to send.
    @Test func aSlowLinkStalls() throws {
        let plan = try Self.plan(pagesPerSecond: 100)
        #expect(
            plan.rounds == [
                .init(pages: 1000, seconds: 10), .init(pages: 195, seconds: 1.95), .init(pages: 120, seconds: 1.2),
                .init(pages: 110, seconds: 1.1),
            ])
        #expect(plan.outcome == .stalls(rounds: 4, downtimeSeconds: 1.1))
        let text = plan.textLines()
        #expect(text.contains("  round  4       110 pages      (0.4 MiB) in 1.100 s"), "\(text)")
        #expect(
            text.last
                == "  does not converge: after 4 round(s) a round would send no fewer pages than the one before; stopping then takes 1.100 s of downtime"
        )
    }

    /// 1,000 pages/s: the image takes 1 s, the 110 pages dirtied meanwhile 0.11 s.
    @Test func aFastLinkConverges() throws {
        let plan = try Self.plan(pagesPerSecond: 1000)
        #expect(plan.rounds == [.init(pages: 1000, seconds: 1)])
        #expect(plan.outcome == .converges(rounds: 1, downtimeSeconds: 0.11))
        #expect(
            plan.textLines().last == "  converges after 1 round(s): the process stopped for 110.0 ms to send the rest")
    }

    /// Faster than any window of whole sweeps: the steady rate times the round.
    @Test func aRoundShorterThanASweepUsesTheRate() throws {
        let plan = try Self.plan(pagesPerSecond: 10000)
        #expect(plan.rounds == [.init(pages: 1000, seconds: 0.1)])
        #expect(plan.outcome == .converges(rounds: 1, downtimeSeconds: 11 * 4096 / (10000 * 4096)))
    }

    /// A round longer than the log: the rate times it (11,000 pages in
    /// 100 s), but no more than every page the log reports: the image's
    /// 1,000 (the shared 100 among them) and 10 × 10 of the sweeps' own.
    @Test func aRoundLongerThanTheLogIsCapped() throws {
        let plan = try Self.plan(pagesPerSecond: 10)
        #expect(plan.rounds == [.init(pages: 1000, seconds: 100)])
        #expect(plan.outcome == .stalls(rounds: 1, downtimeSeconds: 110))
    }

    @Test func oneSweepSaysNothing() throws {
        let text = [
            LogRecord.start(pid: 1, pageSize: 4096, command: ["p"], tracked: ["writable"], timeNs: 0),
            .sweep(SweepRecord(seq: 1, pid: 1, reason: .exit, timeNs: 5, ranges: [Self.pages(0, 3)], faults: 0)),
        ].map { JSONLines.encode($0) + "\n" }.joined()
        let plan = PreCopyPlan(try ProcessReport(log: LogReader.parse(Data(text.utf8), source: "one.jsonl")))
        #expect(plan.outcome == .unknown && plan.rounds.isEmpty && plan.steadyRate == nil)
        #expect(plan.workingSets.allSatisfy { $0.medianPages == nil && $0.maxPages == nil })
        #expect(plan.textLines().last == "  n/a: it needs two sweeps at different times")
    }

    /// The HTML report has the same section, in its contents too.
    @Test func htmlHasThePreCopySection() throws {
        let report = try ProcessReport(log: Self.log)
        let settings = PreCopyPlan.Settings(link: .init(bytesPerSecond: 100 * 4096), downtimeTarget: 0.3)
        let html = HTMLReport.render(report, preCopy: settings)
        #expect(html.contains(##"href="#pre-copy""##) && html.contains(#"id="pre-copy""#))
        #expect(html.contains(HTMLReport.escape(PreCopyPlan(report, settings).textLines().last!)))
        #expect(html.contains("does not converge: after 4 round(s)"))
    }

    @Test func linkSpeeds() {
        #expect(PreCopyPlan.Link(parsing: "1GiB/s")?.bytesPerSecond == 1_073_741_824)
        #expect(PreCopyPlan.Link(parsing: "500MB/s")?.bytesPerSecond == 500_000_000)
        #expect(PreCopyPlan.Link(parsing: "10Gbit/s")?.bytesPerSecond == 1_250_000_000)
        #expect(PreCopyPlan.Link(parsing: "2.5MiB/s")?.bytesPerSecond == 2_621_440)
        for bad in ["", "1GiB", "fast", "-1MB/s", "0GiB/s", "inf MB/s", "1 GiB/s"] {
            #expect(PreCopyPlan.Link(parsing: bad) == nil, "\(bad)")
        }
        #expect(PreCopyPlan.Link.standard.description == "1.00 GiB/s")
    }
}
