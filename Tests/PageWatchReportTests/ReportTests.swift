import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchLog
@testable import PageWatchReport

/// A small log, written by the real encoder: two sweeps of the program with
/// the same writers in both, the kernel writing for read(), and a followed child.
enum SampleLog {
    static let pid: Int32 = 100
    /// Odd and above 2^53: a Double would round it.
    static let startNs: UInt64 = 1_795_748_901_457_949_727

    static func frame(_ function: String, _ ip: UInt64, line: Int? = nil) -> Frame {
        Frame(
            ip: ip, module: "/bin/prog", offset: ip - 0x1000, function: function, file: line.map { _ in "prog.c" },
            line: line)
    }

    static let main = frame("main", 0x1500, line: 30)
    static let start = frame("_start", 0x1100)
    static let fill = [frame("fill", 0x1200, line: 10), main, start]
    static let poke = [frame("poke", 0x1300, line: 20), main, start]
    static let kernelRead = [Frame(ip: 0, function: "[kernel] read"), frame("read", 0x1400, line: 5), main, start]
    static let unseen = [Frame(ip: 0, function: "[unseen]")]

    static func site(_ frames: [Frame], pages: UInt64, faults: Int, at page: UInt64) -> WriteSite {
        WriteSite(
            pages: pages, faults: faults, ranges: [AddressRange(page * 4096, (page + pages) * 4096)], frames: frames)
    }

    static func sweep(_ seq: Int, pid: Int32 = pid, reason: SweepReason = .signal, at ns: UInt64, _ sites: [WriteSite])
        -> LogRecord
    {
        let ranges = sites.flatMap(\.ranges).sorted()
        return .sweep(
            SweepRecord(
                seq: seq, pid: pid, reason: reason, timeNs: ns, ranges: ranges,
                faults: sites.reduce(0) { $0 + $1.faults }, sites: sites))
    }

    static var records: [LogRecord] {
        [
            .start(pid: pid, pageSize: 4096, command: ["prog", "a;b"], tracked: ["writable"], timeNs: startNs),
            sweep(1, at: startNs + 1_000_000, [site(unseen, pages: 10, faults: 0, at: 0x100)]),
            sweep(
                2, at: startNs + 2_000_000,
                [
                    site(fill, pages: 3, faults: 3, at: 0x100), site(poke, pages: 1, faults: 1, at: 0x104),
                    site(kernelRead, pages: 1, faults: 0, at: 0x106),
                ]),
            .fork(pid: 101, parent: pid, timeNs: startNs + 2_500_000),
            sweep(1, pid: 101, reason: .exit, at: startNs + 2_600_000, [site(unseen, pages: 7, faults: 0, at: 0x100)]),
            .exit(pid: 101, end: .exited(code: 0), sweeps: 1, faults: 0, timeNs: startNs + 2_700_000),
            sweep(
                3, reason: .exit, at: startNs + 3_000_000,
                [site(fill, pages: 2, faults: 2, at: 0x100), site(poke, pages: 1, faults: 1, at: 0x104)]),
            .end(pid: pid, end: .exited(code: 0), sweeps: 3, faults: 7, timeNs: startNs + 4_000_000),
        ]
    }

    static var text: String { records.map { JSONLines.encode($0) + "\n" }.joined() }

    static func parsed(_ text: String = text) throws -> ParsedLog {
        try LogReader.parse(Data(text.utf8), source: "sample.jsonl")
    }
}

@Suite struct LogReaderTests {
    @Test func readsEveryRecordWithExactTimes() throws {
        let log = try SampleLog.parsed()
        #expect(log.pid == 100)
        #expect(log.pageSize == 4096)
        #expect(log.command == ["prog", "a;b"])
        #expect(log.startNs == 1_795_748_901_457_949_727)
        #expect(
            log.program.sweeps.map(\.timeNs) == [
                1_795_748_901_458_949_727, 1_795_748_901_459_949_727, 1_795_748_901_460_949_727,
            ])
        #expect(log.program.sweeps.map(\.seq) == [1, 2, 3])
        #expect(log.program.sweeps[1].sites?.map(\.frames) == [SampleLog.fill, SampleLog.poke, SampleLog.kernelRead])
        #expect(log.end?.timeNs == 1_795_748_901_461_949_727)
        #expect(log.processes.map(\.pid) == [100, 101])
        #expect(log.processes[1].parent == 100)
        #expect(log.processes[1].ending?.exitStatus == 0)
    }

    @Test func keepsTheFullUnsigned64BitRange() throws {
        let text =
            #"{"type":"start","schema":"pagewatch/1","pid":1,"page_size":4096,"command":[],"tracked":[],"time_ns":18446744073709551615}"#
        #expect(try SampleLog.parsed(text).startNs == UInt64.max)
    }

    @Test func ignoresUnknownRecordsAndFieldsAndKeepsUnknownReasons() throws {
        var lines = SampleLog.text.split(separator: "\n").map(String.init)
        lines.insert(#"{"type":"checkpoint","pid":100,"time_ns":5,"whatever":[1,2,{"x":null}]}"#, at: 2)
        lines[1] = lines[1].replacingOccurrences(
            of: "\"reason\":\"signal\"", with: "\"reason\":\"attach\",\"new_field\":{\"a\":true}")
        let log = try SampleLog.parsed(lines.joined(separator: "\n") + "\n")
        #expect(log.program.sweeps.count == 3)
        #expect(log.program.sweeps[0].reason == "attach")
    }

    @Test func refusesAnotherSchemaOnItsFirstLine() {
        let text = SampleLog.text.replacingOccurrences(of: "pagewatch/2", with: "pagewatch/3")
        #expect(throws: LogReadError(source: "sample.jsonl", line: 1, problem: .unsupportedSchema("pagewatch/3"))) {
            try SampleLog.parsed(text)
        }
        let error = LogReadError(source: "sample.jsonl", line: 1, problem: .unsupportedSchema("pagewatch/3"))
        #expect(
            error.description
                == "sample.jsonl:1: schema 'pagewatch/3' is not supported: this pagewatch reads pagewatch/2 and pagewatch/1 only"
        )
        // Both schemas this version writes are read back.
        for schema in ["pagewatch/1", "pagewatch/2"] {
            let log = try? SampleLog.parsed(SampleLog.text.replacingOccurrences(of: "pagewatch/2", with: schema))
            #expect(log?.schema.name == schema)
        }
    }

    @Test func namesTheLineOfABadRecord() {
        var lines = SampleLog.text.split(separator: "\n").map(String.init)
        lines[3] = "{\"type\":\"sweep\",\"seq\":"
        #expect(
            throws: LogReadError(
                source: "sample.jsonl", line: 4, problem: .notJSON(detail: "'{\"type\":\"sweep\",\"seq\":'"))
        ) {
            try SampleLog.parsed(lines.joined(separator: "\n"))
        }
        lines[3] = #"{"type":"fork","pid":true,"parent":1,"time_ns":3}"#
        #expect(
            throws: LogReadError(
                source: "sample.jsonl", line: 4,
                problem: .wrongType(record: "fork", field: "pid", expected: "an integer"))
        ) {
            try SampleLog.parsed(lines.joined(separator: "\n"))
        }
        #expect(throws: LogReadError(source: "sample.jsonl", line: 1, problem: .notStartFirst(type: "sweep"))) {
            try SampleLog.parsed(lines.dropFirst().joined(separator: "\n"))
        }
        #expect(throws: LogReadError(source: "sample.jsonl", line: nil, problem: .empty)) { try SampleLog.parsed("") }
    }

    @Test func aMissingFileIsOneLineNamingIt() {
        do {
            _ = try LogReader.read(path: "/nonexistent/log.jsonl")
            Issue.record("read a missing file")
        } catch {
            #expect(error.description == "cannot read /nonexistent/log.jsonl: No such file or directory")
        }
    }

    @Test func selectsAProcessByPid() throws {
        let log = try SampleLog.parsed()
        #expect(try ProcessReport(log: log).process.pid == 100)
        #expect(try ProcessReport(log: log, pid: 101).sweeps.count == 1)
        #expect(
            throws: ProcessReport.SelectionError.noSuchProcess(pid: 7, source: "sample.jsonl", present: [100, 101])
        ) {
            try ProcessReport(log: log, pid: 7)
        }
    }
}

@Suite struct TextReportTests {
    @Test func aggregatesWritersAcrossSweepsSortedByPages() throws {
        let report = try ProcessReport(log: SampleLog.parsed())
        let writers = report.writers
        #expect(writers.map(\.pages) == [10, 5, 2, 1])
        #expect(
            writers.map { FrameNaming.writer($0.frames).function } == [
                "[unseen]", "fill", "poke", "[kernel] read <- read",
            ])
        #expect(writers[1].faults == 5)
        #expect(writers[1].sweeps == 2)
    }

    @Test func listsTopWritersWithSharesAndLines() throws {
        let text = TextReport.render(try ProcessReport(log: SampleLog.parsed()))
        let rows = text.split(separator: "\n").map {
            $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
        }
        #expect(rows.contains("10 55.56% 0 [unseen] -"))
        #expect(rows.contains("5 27.78% 5 fill prog.c:10"))
        #expect(rows.contains("2 11.11% 2 poke prog.c:20"))
        #expect(rows.contains("1 5.56% 0 [kernel] read <- read prog.c:5"))
        #expect(rows.contains("<- main (prog.c:30) <- _start"))
        // Rows in order of pages.
        let order = ["[unseen]", " fill ", " poke ", "[kernel] read"].map { text.range(of: $0)!.lowerBound }
        #expect(order == order.sorted())
        #expect(text.contains("sweeps    3"))
        #expect(text.contains("dirty     18 pages (0.07 MiB) over all sweeps, 7 write faults"))
        // Sweeps 2 and 3: 8 pages in the 2 ms from sweep 1 to sweep 3.
        #expect(
            text.contains(
                "rate      4000.0 pages/s, 15.63 MiB/s: the 8 pages of sweeps 2-3 over the 2.0 ms from sweep 1 to sweep 3"
            ))
        #expect(text.contains("processes also in the log: 101 (forked by 100)"))
    }

    /// Stacks that print alike are one row; --top, --min-percent and
    /// empty rows choose what is listed, and a last line says what is not.
    @Test func mergesLookAlikeStacksAndLimitsTheRows() throws {
        let s = SampleLog.startNs
        // Two fill stacks differ only below what a row shows (a deeper caller
        // chain cut at six callers: the same row); one writer has no page.
        let deep = (0..<8).map { SampleLog.frame("level\($0)", 0x2000 + UInt64($0) * 16) }
        let fillA = [SampleLog.frame("fill", 0x1200, line: 10)] + deep + [SampleLog.frame("a", 0x3000)]
        let fillB = [SampleLog.frame("fill", 0x1200, line: 10)] + deep + [SampleLog.frame("b", 0x3100)]
        let records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: s),
            SampleLog.sweep(
                1, at: s + 1_000_000,
                [
                    SampleLog.site(fillA, pages: 6, faults: 6, at: 0x100),
                    SampleLog.site(fillB, pages: 3, faults: 3, at: 0x200),
                    SampleLog.site(SampleLog.poke, pages: 1, faults: 1, at: 0x300),
                    SampleLog.site(SampleLog.kernelRead, pages: 0, faults: 0, at: 0x400),
                ]),
            .end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: 1, faults: 10, timeNs: s + 2_000_000),
        ]
        let report = try ProcessReport(log: SampleLog.parsed(records.map { JSONLines.encode($0) + "\n" }.joined()))
        func rows(_ limits: TextReport.WriterLimits) -> [String] {
            TextReport.render(report, writers: limits).split(separator: "\n").map {
                $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            }
        }
        let all = rows(.all)
        #expect(all.contains("9 90.00% 9 fill prog.c:10"))
        #expect(all.contains("1 10.00% 1 poke prog.c:20"))
        #expect(all.contains { $0.hasPrefix("0 0.00% 0 [kernel] read") })
        #expect(!all.contains { $0.contains("more row") })
        let screen = rows(TextReport.WriterLimits(top: 20, minPercent: 0, emptyRows: false))
        #expect(!screen.contains { $0.contains("[kernel] read") })
        #expect(screen.contains("1 more row(s), 0 pages (0.00%): --top 0 --min-percent 0 --empty-rows lists them all"))
        let one = rows(TextReport.WriterLimits(top: 1, minPercent: 0, emptyRows: true))
        #expect(one.contains("9 90.00% 9 fill prog.c:10") && !one.contains { $0.contains(" poke ") })
        #expect(one.contains("2 more row(s), 1 pages (10.00%): --top 0 --min-percent 0 --empty-rows lists them all"))
        let big = rows(TextReport.WriterLimits(top: nil, minPercent: 50, emptyRows: true))
        #expect(big.contains("9 90.00% 9 fill prog.c:10") && !big.contains { $0.contains(" poke ") })
    }

    /// A sweep that could not re-arm (format rule 9): the next one reports
    /// its pages again, marked, and the rate does not count them twice.
    @Test func leavesPagesReportedAgainOutOfTheRate() throws {
        let s = SampleLog.startNs
        var reportOnly = SweepRecord(
            seq: 2, pid: SampleLog.pid, reason: .interval, timeNs: s + 2_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x104 * 4096)], faults: 4)
        reportOnly.rearmed = false
        reportOnly.leftWritable = 4
        var again = SweepRecord(
            seq: 3, pid: SampleLog.pid, reason: .exit, timeNs: s + 3_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x106 * 4096)], faults: 2)
        again.reportedAgain = [AddressRange(0x100 * 4096, 0x104 * 4096)]
        let records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: s),
            SampleLog.sweep(1, at: s + 1_000_000, [SampleLog.site(SampleLog.unseen, pages: 10, faults: 0, at: 0x100)]),
            .sweep(reportOnly), .sweep(again),
            .end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: 3, faults: 6, timeNs: s + 4_000_000),
        ]
        let text = records.map { JSONLines.encode($0) + "\n" }.joined()
        #expect(text.contains(#""rearmed":false,"left_writable":4}"#))
        #expect(text.contains(#""reported_again_pages":4,"reported_again":[["0x100000","0x104000"]]}"#))
        let report = try ProcessReport(log: SampleLog.parsed(text))
        #expect(report.sweeps.map(\.rearmed) == [true, false, true])
        #expect(report.sweeps.map(\.reportedAgainPages) == [0, 0, 4])
        #expect(report.totalPages == 20)
        // 4 + 6 - 4 pages in the 2 ms from sweep 1 to sweep 3.
        #expect(report.dirtyRate?.pages == 6)
        #expect(report.sweepRate(2) == 2 / 0.001)
        let rendered = TextReport.render(report)
        #expect(rendered.contains("again     4 pages reported again"))
        #expect(rendered.contains("(not re-armed)"))
        #expect(rendered.contains("(4 again)"))
        #expect(HTMLReport.render(report).contains("4 pages reported again"))
        var summary = Summary()
        for r in records { summary.add(r) }
        #expect(
            summary.render().contains(
                "total: 3 sweeps, 16 dirty pages (0.1 MiB), 6 write faults; 4 pages reported again, not counted"))
    }

    /// Presumed pages (format rule 11): encoded, read back, and counted apart
    /// from the pages reported again for other reasons; a `warning` record
    /// is read and its message kept.
    @Test func countsPresumedPagesApart() throws {
        let s = SampleLog.startNs
        var second = SweepRecord(
            seq: 2, pid: SampleLog.pid, reason: .interval, timeNs: s + 2_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x106 * 4096)], faults: 3)
        second.leftWritable = 3
        var third = SweepRecord(
            seq: 3, pid: SampleLog.pid, reason: .exit, timeNs: s + 3_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x106 * 4096)], faults: 2)
        third.reportedAgain = [AddressRange(0x100 * 4096, 0x103 * 4096)]
        third.presumed = [AddressRange(0x100 * 4096, 0x102 * 4096)]
        let records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: s),
            SampleLog.sweep(1, at: s + 1_000_000, [SampleLog.site(SampleLog.unseen, pages: 10, faults: 0, at: 0x100)]),
            .sweep(second),
            .warning(pid: SampleLog.pid, message: "PageWatch's work took 60% of the time", timeNs: s + 2_500_000),
            .sweep(third),
            .end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: 3, faults: 5, timeNs: s + 4_000_000),
        ]
        let text = records.map { JSONLines.encode($0) + "\n" }.joined()
        #expect(
            text.contains(
                #""reported_again":[["0x100000","0x103000"]],"presumed_pages":2,"presumed":[["0x100000","0x102000"]]}"#
            ))
        #expect(text.contains(#"{"type":"warning","pid":100,"message":"PageWatch's work took 60% of the time","#))
        let log = try SampleLog.parsed(text)
        #expect(log.program.warnings == ["PageWatch's work took 60% of the time"])
        let report = try ProcessReport(log: log)
        #expect(report.sweeps.map(\.presumedPages) == [0, 0, 2])
        #expect(report.presumedPages == 2)
        let rendered = TextReport.render(report)
        #expect(rendered.contains("again     1 pages reported again"))
        #expect(rendered.contains("presumed  2 pages reported presumed written"))
        #expect(rendered.contains("(1 again, 2 presumed)"))
        var summary = Summary()
        for r in records { summary.add(r) }
        #expect(summary.render().contains("(1 again, 2 presumed)"))
    }

    @Test func countsZeroAndFilePagesApartFromTheRate() throws {
        let s = SampleLog.startNs
        var first = SweepRecord(
            seq: 1, pid: SampleLog.pid, reason: .interval, timeNs: s + 1_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x102 * 4096)], faults: 0)
        first.zeroRanges = [AddressRange(0x102 * 4096, 0x110 * 4096)]
        first.fileRanges = [AddressRange(0x200 * 4096, 0x203 * 4096)]
        var second = SweepRecord(
            seq: 2, pid: SampleLog.pid, reason: .exit, timeNs: s + 2_000_000,
            ranges: [AddressRange(0x100 * 4096, 0x101 * 4096)], faults: 1)
        second.zeroRanges = [AddressRange(0x300 * 4096, 0x302 * 4096)]
        let records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: s),
            .sweep(first), .sweep(second),
            .end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: 2, faults: 1, timeNs: s + 3_000_000),
        ]
        let log = try SampleLog.parsed(records.map { JSONLines.encode($0) + "\n" }.joined())
        #expect(log.schema == .v2)
        #expect(log.program.sweeps.map(\.zeroPages) == [14, 2])
        #expect(log.program.sweeps.map(\.filePages) == [3, 0])
        let report = try ProcessReport(log: log)
        #expect(report.totalPages == 3)
        #expect(report.zeroPages == 16 && report.filePages == 3)
        let rendered = TextReport.render(report)
        #expect(rendered.contains("unwritten 16 pages read as zeros, 3 hold their file's contents"))
        #expect(rendered.contains("(14 zero, 3 file)"))
        // The rate: sweep 2's one written page, not its zero pages.
        #expect(rendered.contains("the 1 pages of sweeps 2-2"))
        var summary = Summary()
        for r in records { summary.add(r) }
        #expect(summary.render().contains("(2 zero)"))
    }

    @Test func reportsAFollowedProcessOnItsOwn() throws {
        let text = TextReport.render(try ProcessReport(log: SampleLog.parsed(), pid: 101))
        #expect(text.contains("pid       101, forked by 100, exited with status 0"))
        #expect(text.contains("sweeps    1"))
        #expect(text.contains("rate      n/a"))
    }

    @Test func saysSoWhenTheLogHasNoSites() throws {
        let text = SampleLog.text.replacing(/,"sites":\[.*\]\}$/.anchorsMatchLineEndings(), with: "}")
        #expect(!text.contains("sites"))
        let report = try ProcessReport(log: SampleLog.parsed(text))
        #expect(
            TextReport.render(report).contains("top writers: none in this log (it was written with --stack-depth 0)"))
        #expect(FoldedReport.render(report).isEmpty)
    }
}

@Suite struct FoldedReportTests {
    /// What flamegraph.pl accepts: `frames COUNT`, frames joined by `;`.
    static func check(_ folded: String) -> [(frames: [String], count: UInt64)] {
        folded.split(separator: "\n", omittingEmptySubsequences: false).dropLast().compactMap { line in
            guard let m = line.wholeMatch(of: /(.+) (\d+)/) else {
                Issue.record("not a folded line: '\(line)'")
                return nil
            }
            return (m.1.split(separator: ";", omittingEmptySubsequences: false).map(String.init), UInt64(m.2)!)
        }
    }

    @Test func oneLinePerStackOutermostFirstWeightedByPages() throws {
        let report = try ProcessReport(log: SampleLog.parsed())
        let folded = FoldedReport.render(report)
        #expect(folded.hasSuffix("\n"))
        let lines = Self.check(folded)
        let totalSitePages = report.sweeps.flatMap { $0.sites ?? [] }.reduce(UInt64(0)) { $0 + $1.pages }
        #expect(lines.reduce(0) { $0 + $1.count } == totalSitePages)
        #expect(
            lines.map(\.frames) == [
                ["[unseen]"], ["_start", "main", "fill"], ["_start", "main", "poke"],
                ["_start", "main", "read", "[kernel] read"],
            ])
        #expect(lines.map(\.count) == [10, 5, 2, 1])
        #expect(lines.allSatisfy { $0.frames.allSatisfy { !$0.isEmpty } })
    }

    @Test func namesFramesWithoutSymbolsAndReplacesSemicolons() {
        #expect(FoldedReport.frameName(Frame(ip: 0x7f00, module: "/lib/libx.so", offset: 0x1f0)) == "libx.so+0x1f0")
        #expect(FoldedReport.frameName(Frame(ip: 0x7f00)) == "0x7f00")
        #expect(FoldedReport.frameName(Frame(ip: 1, function: "operator;(a;b)")) == "operator:(a:b)")
    }
}

@Suite struct HTMLReportTests {
    @Test func isOneSelfContainedPageWithTheChartMapAndWriters() throws {
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed()))
        #expect(!html.contains("http://") && !html.contains("https://"))
        #expect(!html.contains(" src=") && !html.contains("<link"))
        #expect(html.hasPrefix("<!DOCTYPE html>"))
        #expect(html.contains("<svg id=\"rate-chart\""))
        #expect(html.contains("<svg id=\"page-map\""))
        #expect(
            Self.element(html, "<svg id=\"rate-chart\"", "</svg>").components(separatedBy: "class=\"rate-bar\"").count
                - 1 == 3)
        #expect(html.contains("<table id=\"writers\""))
        #expect(html.contains("[kernel] read &lt;- read"))
        // One cell per dirty page here: 10 + 5 + 3 pages, one column per page.
        #expect(
            Self.element(html, "<svg id=\"page-map\"", "</svg>").components(separatedBy: "class=\"map-cell\"").count - 1
                == 18)
        // The render self-check is for tests: in the page, never shown.
        #expect(html.contains("<p id=\"render-check\" hidden>"))
        #expect(try Self.unbalancedTags(html) == nil)
    }

    /// A long log's page map groups consecutive sweeps into at most
    /// `pageMapRows` rows, each cell the pages any of its sweeps reported.
    @Test(arguments: [(240, 1, 240), (1000, 5, 200), (1001, 5, 201)])
    func longLogsShareRowsOfThePageMap(sweeps: Int, perRow: Int, rows: Int) throws {
        var records: [LogRecord] = [
            .start(
                pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: SampleLog.startNs)
        ]
        for k in 1...sweeps {
            // Page 0x100 in every sweep, page 0x101 in every tenth.
            var sites = [SampleLog.site(SampleLog.fill, pages: 1, faults: 1, at: 0x100)]
            if k % 10 == 0 { sites.append(SampleLog.site(SampleLog.poke, pages: 1, faults: 1, at: 0x101)) }
            records.append(SampleLog.sweep(k, at: SampleLog.startNs + UInt64(k) * 1_000_000, sites))
        }
        records.append(
            .end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: sweeps, faults: 0, timeNs: SampleLog.startNs + 1))
        let text = records.map { JSONLines.encode($0) + "\n" }.joined()
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(text)))
        let map = Self.element(html, "<svg id=\"page-map\"", "</svg>")
        let cells = map.components(separatedBy: "class=\"map-cell\"").count - 1
        // Page 0x100 in every row; 0x101 in the rows holding a tenth sweep.
        let rowsWithTenth = Set((1...sweeps).filter { $0 % 10 == 0 }.map { ($0 - 1) / perRow }).count
        #expect(cells == rows + rowsWithTenth)
        if perRow == 1 {
            #expect(html.contains("Rows are sweeps, "))
            #expect(map.contains("sweep 10: 1 of 1 pages dirty in 0x101000-0x102000"))
        } else {
            #expect(html.contains("Rows are \(perRow) sweeps each (the log has \(sweeps),"))
            #expect(map.contains("sweeps 6-10: 1 of 1 pages dirty in 0x101000-0x102000"))
            #expect(!map.contains("sweeps 1-5: 1 of 1 pages dirty in 0x101000"))
        }
        #expect(try Self.unbalancedTags(html) == nil)
    }

    /// From the first `start` to the next `end` after it, both included.
    static func element(_ html: String, _ start: String, _ end: String) -> String {
        guard let from = html.range(of: start), let to = html.range(of: end, range: from.upperBound..<html.endIndex)
        else { return "" }
        return String(html[from.lowerBound..<to.upperBound])
    }

    /// The first tag that does not close what it should, or nil when every
    /// element is closed in order (void elements and `<x/>` need no end tag;
    /// scripts and comments are skipped).
    static func unbalancedTags(_ html: String) throws -> String? {
        let void: Set<String> = ["meta", "br", "hr", "img", "input", "link", "!doctype"]
        var open: [String] = []
        var rest = Substring(html)
        while let lt = rest.firstIndex(of: "<") {
            rest = rest[lt...]
            if rest.hasPrefix("<!--") {
                guard let end = rest.range(of: "-->") else { return "an unclosed comment" }
                rest = rest[end.upperBound...]
                continue
            }
            guard let gt = rest.firstIndex(of: ">") else { return "an unclosed tag" }
            let tag = rest[rest.index(after: lt)..<gt]
            rest = rest[rest.index(after: gt)...]
            let name = String(tag.prefix { !$0.isWhitespace && $0 != "/" || $0 == "/" && tag.first == "/" })
                .lowercased()
            if name.hasPrefix("/") {
                guard open.last == String(name.dropFirst()) else {
                    return "</\(name.dropFirst())> closes <\(open.last ?? "nothing")>"
                }
                open.removeLast()
            } else if !void.contains(name) && !tag.hasSuffix("/") {
                open.append(name)
                if name == "script" {
                    guard let end = rest.range(of: "</script>") else { return "an unclosed script" }
                    rest = rest[end.lowerBound...]
                }
            }
        }
        return open.isEmpty ? nil : "<\(open.last!)> not closed"
    }

    /// The sample with its child named by an exec record.
    static var forkedLog: String {
        var records = SampleLog.records
        let fork = records.firstIndex {
            if case .fork = $0 { return true } else { return false }
        }!
        records.insert(
            .exec(
                pid: 101, path: "/usr/bin/cc1", command: ["/usr/bin/cc1", "-O2", "x.c"],
                timeNs: SampleLog.startNs + 2_550_000),
            at: fork + 1)
        return records.map { JSONLines.encode($0) + "\n" }.joined()
    }

    @Test func putsTimeOnTheChartsXAxis() throws {
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed()))
        let chart = Self.element(html, "<svg id=\"rate-chart\"", "</svg>")
        // 4 ms from the start record to the end record: a tick a millisecond, 810 px wide from x = 70.
        let labels = chart.matches(
            of: /<text class="time-label" x="([0-9.]+)" y="272" text-anchor="middle">([^<]*)<\/text>/)
        #expect(labels.map { String($0.1) } == ["70", "272.5", "475", "677.5", "880"])
        #expect(labels.map { String($0.2) } == ["0", "0.001", "0.002", "0.003", "0.004"])
        #expect(chart.contains(">seconds since start</text>"))
        // Sweep 2 spans 1 ms to 2 ms; its 5 pages in 1 ms are half of sweep 1's 10 in 1 ms: half of the 238 px.
        #expect(
            chart.contains(
                "<rect class=\"rate-bar\" data-sweep=\"1\" x=\"272.5\" y=\"135\" width=\"202.5\" height=\"119\""))
        // The followed child: from its fork, 0.2 ms.
        let child = Self.element(html, "<svg id=\"p101-rate-chart\"", "</svg>")
        #expect(child.contains(">seconds since its fork</text>"))
        #expect(child.contains(">0.00020</text>"))

        let hour = HTMLReport.timeAxis(beginNs: 5, endNs: 5 + 3_600_000_000_000)
        #expect(hour.ticks.map(\.label) == ["0", "1000", "2000", "3000"])
        let short = HTMLReport.timeAxis(beginNs: 0, endNs: 3_700_000_000)
        #expect(short.ticks.map(\.label) == ["0", "1", "2", "3"])
        #expect(short.span == 3.7)
        let tenths = HTMLReport.timeAxis(beginNs: 0, endNs: 1_200_000_000)
        #expect(tenths.ticks.map(\.label) == ["0", "0.2", "0.4", "0.6", "0.8", "1.0", "1.2"])
    }

    @Test func embedsEachSweepsWritersAsTheirSites() throws {
        let report = try ProcessReport(log: SampleLog.parsed())
        let html = HTMLReport.render(report)
        let script = Self.element(html, "<script type=\"application/json\" class=\"sweep-data\">", "</script>")
        let json = script.dropFirst("<script type=\"application/json\" class=\"sweep-data\">".count).dropLast(
            "</script>".count)
        let data = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        #expect(data["cap"] as? Int == 10)
        let names = try #require(data["names"] as? [[Any]])
        let sweeps = try #require(data["sweeps"] as? [[Any]])
        #expect(sweeps.count == 3)
        func writers(_ i: Int) -> [String] {
            (sweeps[i][0] as? [[Int]] ?? []).map { w in
                let name = names[w[0]]
                return "\(name[0]) \(name[1] as? String ?? "-") \(w[1]) \(w[2])"
            }
        }
        // Sweep 2: its three sites, biggest first.
        #expect(
            writers(1) == ["fill prog.c:10 3 3", "poke prog.c:20 1 1", "[kernel] read <- read prog.c:5 1 0"])
        // Every sweep: its sites, named as the writers table names them.
        for (i, s) in report.sweeps.enumerated() {
            let sites = (s.sites ?? []).map {
                let name = FrameNaming.writer($0.frames)
                return "\(name.function) \(name.location ?? "-") \($0.pages) \($0.faults)"
            }
            #expect(writers(i) == sites)
            #expect(sweeps[i][1] as? Int == 0)
        }
        #expect(names[0][2] as? String == "")
        #expect(names[1][2] as? String == "<- main (prog.c:30) <- _start")
        // Without script the page shows the busiest sweep after sweep 1: sweep 2.
        #expect(html.contains("<option value=\"1\" selected>2 at 0.002 s: 5 pages, 4 faults (signal)</option>"))
        let table = Self.element(html, "<table class=\"rows sweep-table\" id=\"sweep-table\">", "</table>")
        #expect(table.components(separatedBy: "<tr>").count - 1 == 4)
        #expect(
            table.contains("<tr><td class=\"num\">3</td><td class=\"num\">3</td><td><span class=\"mono\">fill</span>"))
        #expect(html.contains("The page keeps each sweep's 10 biggest writers"))
    }

    @Test func capsTheWritersKeptPerSweep() throws {
        let s = SampleLog.startNs
        let sites = (1...13).map { i in
            SampleLog.site(
                [SampleLog.frame("w\(i)", 0x1000 + UInt64(i) * 16)], pages: UInt64(20 - i), faults: 1,
                at: UInt64(i) * 0x100)
        }
        let records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["prog"], tracked: ["writable"], timeNs: s),
            SampleLog.sweep(1, at: s + 1_000_000, sites),
        ]
        let report = try ProcessReport(log: SampleLog.parsed(records.map { JSONLines.encode($0) + "\n" }.joined()))
        let model = SweepWritersView.model(report)
        #expect(model.sweeps[0].entries.map(\.pages) == Array(10...19).reversed().map(UInt64.init))
        #expect(model.sweeps[0].moreStacks == 3)
        #expect(model.sweeps[0].morePages == 7 + 8 + 9)
        #expect(SweepWritersView.json(model).contains("],3,24]"))
        #expect(SweepWritersView.moreNote(model.sweeps[0]) == "3 smaller stacks, 24 pages, not listed.")
        #expect(SweepWritersView.jsonString("</script>\"\u{1}") == #""\u003c/script\u003e\"\u0001""#)
    }

    @Test func drawsAFlameGraphOfTheFoldedStacks() throws {
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed()))
        let flame = Self.element(html, "<svg id=\"flame-graph\"", "</svg>")
        // 18 pages over 900 px: 50 px a page. [unseen]'s 10 first, then _start's 8: main's
        // fill (5), poke (2), read (1); four frames above the root, 17 px a row.
        #expect(flame.contains("height=\"85\""))
        let fill = try #require(
            flame.firstMatch(
                of:
                    /<rect class="flame-frame" x="([0-9.]+)" y="17" width="([0-9.]+)" height="16" fill="[^"]+"><title>fill &lt;- main &lt;- _start: 5 pages \(27.78%\)<\/title>/
            ))
        #expect(fill.1 == "500" && fill.2 == "250")
        #expect(
            flame.contains(
                "x=\"0\" y=\"51\" width=\"500\" height=\"16\" fill=\"rgb(185,185,185)\"><title>[unseen]: 10 pages (55.56%)</title>"
            ))
        #expect(flame.contains("<title>[kernel] read &lt;- read &lt;- main &lt;- _start: 1 pages (5.56%)</title>"))
        #expect(flame.contains("<title>all writers: 18 pages (100.00%)</title>"))
        #expect(flame.components(separatedBy: "class=\"flame-frame\"").count - 1 == 8)
        #expect(!flame.contains(HTMLReport.barColour))
    }

    @Test func leavesOutFramesUnderATenthOfAPercent() {
        let graph = FlameGraph([(["main", "big"], 10_000), (["main", "tiny"], 5), (["main", "small"], 20)])
        let drawn = graph.svg(id: "f")!
        #expect(drawn.omitted == 1)
        #expect(drawn.svg.contains("main &lt;- … ") == false)
        #expect(drawn.svg.contains("<title>small &lt;- main: 20 pages (0.20%)</title>"))
        #expect(!drawn.svg.contains("tiny"))
        // At most maxFrames: the lightest go first, never a caller before its callees.
        #expect(graph.threshold(minShare: 0, maxFrames: 3, maxDepth: 64) == 21)
        #expect(graph.svg(id: "f", maxFrames: 3)!.omitted == 2)
    }

    @Test func picksAProcessByCommandWithItsTotals() throws {
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(Self.forkedLog)))
        let picker = Self.element(html, "<select id=\"process-picker\">", "</select>")
        #expect(
            picker
                == "<select id=\"process-picker\"><option value=\"100\" data-prefix=\"\">100 prog: 18 pages</option>"
                + "<option value=\"101\" data-prefix=\"p101-\">101 cc1: 7 pages</option></select>")
        let table = Self.element(html, "<table class=\"rows\" id=\"process-table\">", "</table>")
        #expect(
            table.contains(
                "<a href=\"#process-101\" data-pick=\"101\">cc1</a><div class=\"callers\">/usr/bin/cc1 -O2 x.c</div>"))
        #expect(
            table.contains(
                "<td class=\"num\">100</td><td class=\"num\">1</td><td class=\"num\">7</td><td class=\"num\">0.03</td><td class=\"num\">0</td><td class=\"end\">exited with status 0</td>"
            ))
        #expect(
            table.contains(
                "<th>all 2 processes</th><th></th><th class=\"num\">4</th><th class=\"num\">25</th><th class=\"num\">0.10</th><th class=\"num\">7</th>"
            ))
        // Each process's sections, the child's ids prefixed.
        for id in [
            "process-100", "process-101", "chart", "p101-chart", "p101-flame-graph", "p101-page-map",
            "p101-sweep-table",
        ] {
            #expect(html.contains("id=\"\(id)\""), "\(id)")
        }
        #expect(html.contains("<h2 class=\"process-title\">Process 101: cc1</h2>"))
        #expect(try Self.unbalancedTags(html) == nil)

        // --pid 101: the child first, unprefixed; the program after it.
        let child = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(Self.forkedLog), pid: 101))
        #expect(
            child.contains(
                "<option value=\"101\" data-prefix=\"\">101 cc1: 7 pages</option><option value=\"100\" data-prefix=\"p100-\">"
            ))
        #expect(child.contains("<tr><th>command</th><td>/usr/bin/cc1 -O2 x.c</td></tr>"))
        // One process: no picker.
        let one = HTMLReport.render(
            try ProcessReport(
                log: SampleLog.parsed(
                    SampleLog.text.split(separator: "\n").filter { !$0.contains("\"pid\":101") }.joined(separator: "\n")
                        + "\n")))
        #expect(!one.contains("process-picker") && !one.contains("id=\"processes\""))
    }

    /// A build's log: every process listed, the biggest drawn.
    @Test func drawsTheBiggestProcessesAndListsThemAll() throws {
        let s = SampleLog.startNs
        var records: [LogRecord] = [
            .start(pid: SampleLog.pid, pageSize: 4096, command: ["make"], tracked: ["writable"], timeNs: s)
        ]
        for i in 1...44 {
            let child = SampleLog.pid + Int32(i)
            records.append(.fork(pid: child, parent: SampleLog.pid, timeNs: s + UInt64(i) * 1_000))
            // Pages 1...44: the children 1...5 are the smallest.
            records.append(
                SampleLog.sweep(
                    1, pid: child, reason: .exit, at: s + UInt64(i) * 1_000 + 500,
                    [SampleLog.site(SampleLog.fill, pages: UInt64(i), faults: i, at: 0x100)]))
        }
        let html = HTMLReport.render(
            try ProcessReport(log: SampleLog.parsed(records.map { JSONLines.encode($0) + "\n" }.joined())))
        let picker = Self.element(html, "<select id=\"process-picker\">", "</select>")
        #expect(picker.components(separatedBy: "<option").count - 1 == HTMLReport.maxProcessesDrawn)
        #expect(html.components(separatedBy: "<div class=\"process\"").count - 1 == 40)
        #expect(!html.contains("id=\"process-105\"") && html.contains("id=\"process-106\""))
        let table = Self.element(html, "<table class=\"rows\" id=\"process-table\">", "</table>")
        #expect(table.components(separatedBy: "<tr>").count - 1 == 1 + 45)
        #expect(table.contains("<tr><td class=\"num\">105</td><td>(no exec, forked by 100)</td>"))
        #expect(table.contains("<th>all 45 processes</th><th></th><th class=\"num\">44</th><th class=\"num\">990</th>"))
        #expect(html.contains("The page draws the 40 that dirtied most pages"))
        #expect(try Self.unbalancedTags(html) == nil)
    }

    /// Logs written with --stack-depth 0, and a log cut before its first sweep.
    @Test func saysSoWhenThereIsNothingToDraw() throws {
        let noSites = SampleLog.text.replacing(/,"sites":\[.*\]\}$/.anchorsMatchLineEndings(), with: "}")
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(noSites)))
        for id in ["sweep-writers", "top-writers", "flame"] {
            #expect(
                Self.element(html, "<section id=\"\(id)\">", "</section>").contains(
                    "None in this log: it was written with --stack-depth 0."), "\(id)")
        }
        #expect(!html.contains("class=\"sweep-data\"") && !html.contains("class=\"flame\""))
        #expect(try Self.unbalancedTags(html) == nil)

        let startOnly = String(SampleLog.text.prefix { $0 != "\n" }) + "\n"
        let empty = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(startOnly)))
        #expect(
            empty.contains(
                "<section id=\"sweep-writers\">\n<h2>Writers of one sweep</h2>\n<p class=\"note\">No sweeps in this log.</p>"
            ))
        #expect(empty.contains("<text class=\"time-label\" x=\"70\" y=\"272\" text-anchor=\"middle\">0</text>"))
        #expect(try Self.unbalancedTags(empty) == nil)
    }

    @Test func everyTableOfContentsLinkHasItsSection() throws {
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(Self.forkedLog)))
        let nav = Self.element(html, "<nav id=\"toc\">", "</nav>")
        let targets = nav.matches(of: /href="#([^"]+)"/).map { String($0.1) }
        #expect(
            targets == [
                "processes", "summary", "chart", "sweeps", "sweep-writers", "top-writers", "flame", "map", "pre-copy",
            ])
        let sections = nav.matches(of: /data-section="([^"]+)"/).map { String($0.1) }
        for id in targets + sections.map({ "p101-" + $0 }) {
            #expect(html.components(separatedBy: "id=\"\(id)\"").count - 1 == 1, "\(id)")
        }
        let ids = html.matches(of: /\sid="([^"]+)"/).map { String($0.1) }
        #expect(Set(ids).count == ids.count)
    }

    @Test func escapesWhatTheProgramNamed() throws {
        let text = SampleLog.text.replacingOccurrences(of: "\"prog\",\"a;b\"", with: "\"<script>alert(1)</script>\"")
        let html = HTMLReport.render(try ProcessReport(log: SampleLog.parsed(text)))
        #expect(!html.contains("<script>alert"))
        #expect(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"))
    }

    @Test func roundsTheRateAxis() {
        #expect(HTMLReport.niceCeiling(0) == 1)
        #expect(HTMLReport.niceCeiling(1_100) == 2_000)
        #expect(HTMLReport.niceCeiling(56_000) == 100_000)
        #expect(HTMLReport.niceCeiling(0.3) == 0.5)
        #expect(HTMLReport.compact(1_600) == "1.6k")
        #expect(HTMLReport.compact(20_000) == "20k")
    }
}

@Suite struct AddressMapTests {
    func sweep(_ ranges: [AddressRange]) -> LoggedSweep {
        LoggedSweep(
            seq: 1, pid: 1, reason: "signal", timeNs: 0, dirtyPages: ranges.reduce(0) { $0 + $1.pageCount },
            faults: 0, ranges: ranges, sites: nil)
    }

    @Test func squeezesOutTheGapsBetweenMappings() {
        // 4 pages of heap and 2 pages 0x7f… far away: six columns, two blocks.
        let heap = AddressRange(0x5555_0000_0000, 0x5555_0000_4000),
            lib = AddressRange(0x7f00_0000_0000, 0x7f00_0000_2000)
        let map = AddressMap([sweep([heap, lib])], pageSize: 4096)
        #expect(map.pagesPerColumn == 1)
        #expect(map.columns == 6)
        #expect(map.blocks.map(\.span) == [heap, lib])
        #expect(map.dirtyPerColumn([AddressRange(0x5555_0000_1000, 0x5555_0000_3000)]) == [1: 1, 2: 1])
        #expect(map.dirtyPerColumn([lib]) == [4: 1, 5: 1])
        #expect(map.bucket(5).start == 0x7f00_0000_1000)
    }

    @Test func bucketsManyPagesPerColumnAndCountsThemAll() {
        let big = AddressRange(0x1000_0000, 0x1000_0000 + 1000 * 4096)
        let map = AddressMap([sweep([big])], pageSize: 4096, columns: 100)
        #expect(map.pagesPerColumn == 11)
        let counts = map.dirtyPerColumn([big])
        #expect(counts.values.reduce(0, +) == 1000)
        #expect(map.bucket(map.columns - 1).end == big.end.value)
    }

    @Test func cutsAtMostTheWidestGaps() {
        let ranges = (0..<40).map { i in
            AddressRange(
                UInt64(i) * 0x10_0000 + (i >= 20 ? 0x1_0000_0000 : 0),
                UInt64(i) * 0x10_0000 + 0x1000 + (i >= 20 ? 0x1_0000_0000 : 0))
        }
        let map = AddressMap([sweep(ranges)], pageSize: 4096, maxBlocks: 4)
        #expect(map.blocks.count == 4)
        #expect(map.blocks.contains { $0.span.start.value == 0x1_0000_0000 + 20 * 0x10_0000 })
        #expect(map.dirtyPerColumn(ranges).values.reduce(0, +) == 40)
    }
}

/// JIT code the log could not name (the JVM writes its map at exit): `report`
/// names it from the process's perf map, when that was written during the run.
@Suite struct JITNamesTests {
    static let jitFrame = Frame(ip: 0x7f00_0000_1010)
    static let caller = Frame(ip: 0x7f00_0000_2008)

    static func log(endNs: UInt64?) throws -> ParsedLog {
        let site = SampleLog.site([jitFrame, caller, SampleLog.main], pages: 1, faults: 1, at: 0x100)
        let kernel = SampleLog.site(
            [Frame(ip: 0, function: "[kernel] read"), Frame(ip: 0x7f00_0000_2000)], pages: 1, faults: 0, at: 0x101)
        var records: [LogRecord] = [
            .start(
                pid: SampleLog.pid, pageSize: 4096, command: ["java"], tracked: ["writable"], timeNs: SampleLog.startNs),
            SampleLog.sweep(1, at: SampleLog.startNs + 1, [site, kernel]),
        ]
        if let endNs {
            records.append(.end(pid: SampleLog.pid, end: .exited(code: 0), sweeps: 1, faults: 1, timeNs: endNs))
        }
        return try SampleLog.parsed(records.map { JSONLines.line($0) }.joined())
    }

    static func map(_ text: String, modified: Date, name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("jitnames-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("\(name)-perf-\(SampleLog.pid).map").path
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        try FileManager.default.setAttributes([.modificationDate: modified], ofItemAtPath: path)
        return path
    }

    static func frames(_ log: ParsedLog) -> [[Frame]] { log.program.sweeps[0].sites!.map(\.frames) }

    @Test func namesUnnamedCodeFromAMapWrittenDuringTheRun() throws {
        let now = Date()
        let nowNs = UInt64(now.timeIntervalSince1970 * 1e9)
        let path = try Self.map(
            "0x00007f0000001000 0x0000000000000100 void W.fill(long[], long)\n7f0000002000 8 Interpreter\n",
            modified: now, name: "now")
        let log = try Self.log(endNs: nowNs + 1_000_000_000)
        let named = Self.frames(JITNames.applied(to: log, mapPath: { _ in path }))
        #expect(named[0][0] == Frame(ip: 0x7f00_0000_1010, function: "void W.fill(long[], long)", jit: true))
        // A return address is looked up at its call: just past the end of `Interpreter`, still in it.
        #expect(named[0][1] == Frame(ip: 0x7f00_0000_2008, function: "Interpreter", jit: true))
        #expect(named[0][2] == SampleLog.main)
        // After the kernel's pseudo-frame the writer's own IP, looked up as is.
        #expect(
            named[1] == [
                Frame(ip: 0, function: "[kernel] read"),
                Frame(ip: 0x7f00_0000_2000, function: "Interpreter", jit: true),
            ])
        let text = TextReport.render(try ProcessReport(log: JITNames.applied(to: log, mapPath: { _ in path })))
        #expect(text.contains("void W.fill(long[], long) [jit]"))
        #expect(text.contains("<- Interpreter [jit] <- main\n"))
        let html = HTMLReport.render(try ProcessReport(log: JITNames.applied(to: log, mapPath: { _ in path })))
        #expect(html.contains("<span class=\"mono\">void W.fill(long[], long) [jit]</span>"))
    }

    @Test func leavesAMapOfAnotherRunAlone() throws {
        // Modified before the log's start (a file left behind by an earlier process with this pid).
        let path = try Self.map(
            "7f0000001000 100 stale\n", modified: Date(timeIntervalSince1970: 1_700_000_000), name: "stale")
        let log = try Self.log(endNs: SampleLog.startNs + 2)
        #expect(Self.frames(JITNames.applied(to: log, mapPath: { _ in path })) == Self.frames(log))
        // Modified long after the process ended: another process's with the pid used again.
        let late = try Self.map("7f0000001000 100 late\n", modified: Date(), name: "late")
        #expect(Self.frames(JITNames.applied(to: log, mapPath: { _ in late })) == Self.frames(log))
        #expect(Self.frames(JITNames.applied(to: log, mapPath: { _ in "/nonexistent/perf.map" })) == Self.frames(log))
    }
}
