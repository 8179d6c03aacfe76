import Foundation
import Testing

/// The log names the tracked mappings (docs/format.md, `mappings`): checked
/// against what the fixtures know of their own memory, the path of their
/// binary, and what `/proc/PID/maps` calls anonymous memory, the heap and
/// the stack.
@Suite struct MappingNamesTests {
    typealias Entry = (start: UInt64, end: UInt64, name: String)

    static func entries(_ record: [String: Any]) -> [Entry]? {
        guard let list = record["mappings"] as? [[String: Any]] else { return nil }
        return list.map { m in
            let pair = m["range"] as! [String]
            return (
                UInt64(pair[0].dropFirst(2), radix: 16)!, UInt64(pair[1].dropFirst(2), radix: 16)!, m["name"] as! String
            )
        }
    }

    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

    /// The fixture's binary as maps names it: symbolic links resolved.
    static func binaryPath(_ fixture: String) -> String {
        URL(fileURLWithPath: Harness.fixture(fixture)).resolvingSymlinksInPath().path
    }

    static func run(_ fixture: String, _ extra: [String] = []) throws -> (log: [[String: Any]], stdout: String) {
        let log = Harness.temporaryPath("names-\(fixture)-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let r = try Harness.run(
            [Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0", "--stack-depth", "0"] + extra
                + ["--output", log, "--", Harness.fixture(fixture)], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        return (try Harness.readLog(log), r.stdout)
    }

    /// Every page of every sweep is named by the records up to it (a later
    /// record's name over an earlier one's, an exec starting afresh), as a
    /// reader applies them.
    static func unnamedPages(_ log: [[String: Any]]) -> [String] {
        var names: [UInt64: String] = [:]
        var missing: [String] = []
        for record in log {
            let type = record["type"] as? String
            if type == "exec" { names = [:] }
            for e in entries(record) ?? [] {
                var p = e.start
                while p < e.end { names[p] = e.name; p += 4096 }
            }
            guard type == "sweep" else { continue }
            for field in ["ranges", "zero_ranges", "file_ranges"] {
                for pair in record[field] as? [[String]] ?? [] {
                    var p = UInt64(pair[0].dropFirst(2), radix: 16)!
                    let end = UInt64(pair[1].dropFirst(2), radix: 16)!
                    while p < end {
                        if names[p] == nil { missing.append("sweep \(record["seq"]!): \(hex(p))") }
                        p += 4096
                    }
                }
            }
        }
        return missing
    }

    /// fx_zero maps 256 anonymous pages at a fixed address and a private
    /// mapping of a memfd right after them, before its first sweep.
    @Test func namesTheAnonymousRegionTheMemfdTheBinaryTheHeapAndTheStack() throws {
        let (log, stdout) = try Self.run("fx_zero")
        let region = try #require(try FixtureTruth(stdout: stdout).segments.first?.region)
        let anonEnd = region.start + 256 * 4096
        let start = try #require(log.first)
        let atStart = try #require(Self.entries(start), "the start record has no mappings")
        // The binary's writable data is a private file mapping: its path, as maps gives it.
        #expect(atStart.contains { $0.name == Self.binaryPath("fx_zero") })
        #expect(atStart.filter { $0.name == "[stack]" }.count == 1)
        #expect(!atStart.contains { $0.start < region.end && region.start < $0.end })
        // The region is named by the first sweep, exactly, and by no record after.
        let sweeps = log.filter { $0["type"] as? String == "sweep" }
        let first = try #require(Self.entries(sweeps[0]))
        let inRegion = first.filter { $0.start < region.end && region.start < $0.end }
        #expect(
            inRegion.map { [Self.hex($0.start), Self.hex($0.end), $0.name] } == [
                [Self.hex(region.start), Self.hex(anonEnd), "[anon]"],
                [Self.hex(anonEnd), Self.hex(region.end), "/memfd:fx_zero (deleted)"],
            ])
        for s in sweeps.dropFirst() {
            #expect(!(Self.entries(s) ?? []).contains { $0.start < region.end && region.start < $0.end })
        }
        // The Swift runtime the fixtures are linked with mallocs at its start.
        #expect(log.contains { (Self.entries($0) ?? []).contains { $0.name == "[heap]" } })
        #expect(Self.unnamedPages(log).isEmpty, "\(Self.unnamedPages(log).prefix(5))")
    }

    @Test func underSchemaOneNothingIsNamed() throws {
        let (log, _) = try Self.run("fx_zero", ["--schema", "1"])
        #expect(log.count > 2)
        #expect(!log.contains { $0["mappings"] != nil })
    }

    /// fx_exec maps region A, execs itself, and the new image maps region B:
    /// the exec record names the new image's memory, not region A.
    @Test func theExecRecordNamesTheNewImage() throws {
        let (log, stdout) = try Self.run("fx_exec")
        let truth = try FixtureTruth(stdout: stdout)
        try #require(truth.segments.count == 2)
        let a = truth.segments[0].region, b = truth.segments[1].region
        let execIndex = try #require(log.firstIndex { $0["type"] as? String == "exec" })
        let atExec = try #require(Self.entries(log[execIndex]), "the exec record has no mappings")
        #expect(atExec.contains { $0.name == Self.binaryPath("fx_exec") })
        #expect(atExec.contains { $0.name == "[stack]" })
        #expect(!atExec.contains { $0.start < a.end && a.start < $0.end })
        let before = log[..<execIndex].flatMap { Self.entries($0) ?? [] }
        #expect(before.contains { $0.start == a.start && $0.end == a.end && $0.name == "[anon]" })
        let after = log[(execIndex + 1)...].flatMap { Self.entries($0) ?? [] }
        #expect(after.contains { $0.start == b.start && $0.end == b.end && $0.name == "[anon]" })
        #expect(Self.unnamedPages(log).isEmpty, "\(Self.unnamedPages(log).prefix(5))")
    }

    /// `pagewatch report` lists the mappings the fixture dirtied, by name.
    @Test func theReportListsTheMappingsDirtied() throws {
        let log = Harness.temporaryPath("names-report-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(atPath: log) }
        let run = try Harness.run(
            [
                Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0", "--stack-depth", "0",
                "--output", log, "--", Harness.fixture("fx_phases"),
            ], timeout: 60)
        #expect(run.status == 0, "\(run.stderr)")
        let report = try Harness.run([Harness.pagewatch, "report", "--top", "0", log], timeout: 60)
        #expect(report.status == 0, "\(report.stderr)")
        let lines = report.stdout.split(separator: "\n").map {
            $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        }
        let table = try #require(lines.firstIndex { $0.starts(with: ["mappings", "dirtied:"]) })
        let rows = lines[(table + 2)...].filter { $0.count >= 4 }
        // fx_phases writes 1 + 4 + 20 + 0 + 2 pages of its anonymous region, and sweep 1 reports page 0 as written.
        let anon = try #require(rows.first { $0[3] == "[anon]" })
        #expect(UInt64(anon[0])! >= 27)
        #expect(rows.contains { $0[3] == "[stack]" })
        #expect(rows.contains { $0[3] == Self.binaryPath("fx_phases") })
        #expect(!rows.contains { $0[3] == "(not" })
    }
}
