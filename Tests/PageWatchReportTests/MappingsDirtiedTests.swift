import Foundation
import Testing
import PageWatchAddressSpace
@testable import PageWatchLog
@testable import PageWatchReport

/// The "mappings dirtied" table and the page map's names, from a log built
/// by hand: a heap that grows, a library's data, an anonymous region, and
/// a stack, each written in known sweeps.
@Suite struct MappingsDirtiedTests {
    static let pid: Int32 = 200
    static let page: UInt64 = 4096
    static func named(_ first: UInt64, _ pages: UInt64, _ name: String) -> NamedMapping {
        NamedMapping(range: AddressRange(first * page, (first + pages) * page), name: name)
    }
    static func pages(_ first: UInt64, _ count: UInt64) -> AddressRange {
        AddressRange(first * page, (first + count) * page)
    }

    static let heap = named(0x50000, 4, "[heap]")
    static let python = named(0x7f000, 8, "/usr/lib/libpython3.12.so.1.0")
    static let stack = named(0x7ffc0, 2, "[stack]")

    /// Sweep 1: 2 heap pages, 8 of libpython, 1 stack. Sweep 2: the heap
    /// grew by 4 pages (named by that sweep) and 5 heap pages were written,
    /// 1 stack page. Sweep 3: an anonymous region appears, 3 pages written,
    /// and 1 libpython page.
    static func records(naming: Bool) -> [LogRecord] {
        func sweep(_ seq: Int, _ ranges: [AddressRange], _ mappings: [NamedMapping] = []) -> LogRecord {
            var s = SweepRecord(
                seq: seq, pid: pid, reason: seq == 3 ? .exit : .signal, timeNs: 1_000 + UInt64(seq) * 1_000_000,
                ranges: ranges, faults: 1)
            if naming { s.mappings = mappings }
            return .sweep(s)
        }
        return [
            .start(
                pid: pid, pageSize: page, command: ["prog"], tracked: ["writable"], timeNs: 1_000,
                mappings: naming ? [heap, python, stack] : nil),
            sweep(1, [pages(0x50000, 2), pages(0x7f000, 8), pages(0x7ffc1, 1)]),
            sweep(2, [pages(0x50003, 5), pages(0x7ffc1, 1)], [named(0x50004, 4, "[heap]")]),
            sweep(3, [pages(0x60000, 3), pages(0x7f002, 1)], [named(0x60000, 16, "[anon]")]),
            .end(pid: pid, end: .exited(code: 0), sweeps: 3, faults: 3, timeNs: 5_000_000),
        ]
    }

    static func report(named: Bool) throws -> ProcessReport {
        let text = records(naming: named).map(JSONLines.line).joined()
        return try ProcessReport(log: LogReader.parse(Data(text.utf8), source: "named.jsonl"))
    }

    @Test func sumsThePagesOfEachMappingNameOverTheSweeps() throws {
        let rows = try #require(try Self.report(named: true).mappingsDirtied)
        #expect(
            rows == [
                MappingDirtied(name: "/usr/lib/libpython3.12.so.1.0", pages: 9, sweeps: 2),
                MappingDirtied(name: "[heap]", pages: 7, sweeps: 2),
                MappingDirtied(name: "[anon]", pages: 3, sweeps: 1),
                MappingDirtied(name: "[stack]", pages: 2, sweeps: 2),
            ])
    }

    @Test func theTextReportListsTheTopMappings() throws {
        let report = try Self.report(named: true)
        func lines(top: Int?) -> [String] {
            TextReport.render(report, writers: TextReport.WriterLimits(top: top)).split(separator: "\n").map {
                $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            }
        }
        let all = lines(top: nil)
        #expect(all.contains("mappings dirtied: 4 mapping name(s), 21 pages over all sweeps"))
        #expect(all.contains("9 42.86% 2 /usr/lib/libpython3.12.so.1.0"))
        #expect(all.contains("7 33.33% 2 [heap]"))
        #expect(all.contains("3 14.29% 1 [anon]"))
        #expect(all.contains("2 9.52% 2 [stack]"))
        let two = lines(top: 2)
        #expect(two.contains("7 33.33% 2 [heap]") && !two.contains("3 14.29% 1 [anon]"))
        #expect(two.contains("2 more row(s), 5 pages (23.81%): --top 0 lists them all"))
    }

    @Test func theHTMLReportHasTheTableAndNamesTheBlocks() throws {
        let html = HTMLReport.render(try Self.report(named: true))
        #expect(html.contains("<h2>Mappings dirtied</h2>"))
        #expect(
            html.contains(
                "<tr><td class=\"num\">7</td><td class=\"num\">33.33%</td><td class=\"num\">2</td><td class=\"mono\">[heap]</td></tr>"
            ))
        // Blocks, cut at every gap (there are fewer than the map's 16 blocks): the
        // heap's pages 0-1, its pages 3-7, the anonymous region, libpython, the stack.
        #expect(html.contains("<td class=\"block-mappings\">[heap] (2)</td>"))
        #expect(html.contains("<td class=\"block-mappings\">[heap] (5)</td>"))
        #expect(html.contains("<td class=\"block-mappings\">[anon] (3)</td>"))
        #expect(html.contains("<td class=\"block-mappings\">/usr/lib/libpython3.12.so.1.0 (8)</td>"))
        #expect(html.contains("<td class=\"block-mappings\">[stack] (1)</td>"))
        #expect(html.contains("<title>A: [heap] (2)</title>") && html.contains("<title>E: [stack] (1)</title>"))
        #expect(html.contains("pages dirty in 0x50000000-0x50001000 ([heap])"))
    }

    @Test func aLogWithoutNamesGivesTheReportsOfBefore() throws {
        let report = try Self.report(named: false)
        #expect(report.mappingsDirtied == nil)
        let text = TextReport.render(report)
        #expect(!text.contains("mappings dirtied"))
        let html = HTMLReport.render(report)
        #expect(!html.contains("Mappings dirtied") && !html.contains("block-mappings") && !html.contains("([heap])"))
        #expect(html.contains("<th class=\"num\">pages reported</th></tr>"))
    }
}
