import Foundation
import Testing

/// `--verify-contents`: a write PageWatch cannot see (through /proc/PID/mem,
/// which writes a read-only page without a fault) is found at the next sweep
/// and reported; without one, nothing is.
@Suite(.serialized) struct ContentCheckTests {
    struct Run {
        var stdout: String
        var stderr: String
        var status: Int32
        var log: [[String: Any]]
        var logPath: String
    }

    /// fx_hidden_write under `--verify-contents`; `hide`: page `page` is
    /// written through /proc/PID/mem while the program waits.
    func run(hiding hide: Bool, page: Int = 2) throws -> Run {
        let log = Harness.temporaryPath("hidden-\(hide)-\(page).jsonl")
        let pagewatch = try Background([
            Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2",
            "--interval", "0", "--track", "0x380000000000-0x380000005000", "--output", log,
            "--", Harness.fixture("fx_hidden_write"), "\(page)",
        ])
        #expect(pagewatch.waitFor("armed\n"))
        if hide {
            let text = try String(
                contentsOfFile: "/proc/\(pagewatch.pid)/task/\(pagewatch.pid)/children", encoding: .utf8)
            let child = try #require(Int32(text.split(separator: " ").first ?? ""))
            let fd = open("/proc/\(child)/mem", O_RDWR)
            #expect(fd >= 0)
            var byte: UInt8 = 0x5a
            #expect(pwrite(fd, &byte, 1, off_t(0x3800_0000_0000 + page * 4096 + 100)) == 1)
            close(fd)
        }
        pagewatch.send("go\n")
        let status = pagewatch.finish()
        return Run(
            stdout: pagewatch.stdout, stderr: pagewatch.stderr, status: status, log: try Harness.readLog(log),
            logPath: log)
    }

    func sweeps(_ log: [[String: Any]]) -> [[String: Any]] { log.filter { $0["type"] as? String == "sweep" } }

    @Test func aHiddenWriteIsReportedAsMissed() throws {
        let r = try run(hiding: true)
        #expect(r.stdout.contains("hidden write seen\n"))
        #expect(r.status == 3, "stderr: \(r.stderr)")
        #expect(
            r.stderr.contains(
                "missed write: 1 page(s) changed with no write seen before sweep 2: 0x380000002000-0x380000003000"))
        let missed = r.log.filter { $0["type"] as? String == "missed" }
        #expect(missed.count == 1)
        #expect(missed.first?["seq"] as? Int == 2)
        #expect(missed.first?["pages"] as? Int == 1)
        #expect(missed.first?["ranges"] as? [[String]] == [["0x380000002000", "0x380000003000"]])
        // The missed page is reported by its sweep: the report stays exact.
        let truth = try FixtureTruth(stdout: r.stdout).expectedSweeps
        let s = sweeps(r.log)
        #expect(s.count == truth.count + 1)  // and the exit sweep
        for (k, expected) in truth.enumerated() where k < s.count {
            #expect(FixtureTruth.pages(in: expected.region, of: s[k]) == expected.pages, "sweep \(k + 1)")
        }
        #expect(truth.last?.pages == [0, 2])
        // `report` says so too.
        let report = try Harness.run([Harness.pagewatch, "report", r.logPath])
        #expect(
            report.stdout.contains("missed    1 page(s) changed with no write seen before sweep 2"), "\(report.stdout)")
    }

    /// A page that read as zeros is kept as an empty copy; a hidden write
    /// to it is found all the same.
    @Test func aHiddenWriteToAZeroPageIsReportedAsMissed() throws {
        let r = try run(hiding: true, page: 4)
        #expect(r.stdout.contains("hidden write seen\n"))
        #expect(r.status == 3, "stderr: \(r.stderr)")
        let missed = r.log.filter { $0["type"] as? String == "missed" }
        #expect(missed.count == 1)
        #expect(missed.first?["ranges"] as? [[String]] == [["0x380000004000", "0x380000005000"]])
        #expect(try FixtureTruth(stdout: r.stdout).expectedSweeps.last?.pages == [0, 4])
    }

    @Test func withoutAHiddenWriteNothingIsMissed() throws {
        let untracked = try Harness.run([Harness.fixture("fx_hidden_write")], stdin: "go\n")
        let r = try run(hiding: false)
        #expect(r.stdout == untracked.stdout)
        #expect(r.status == untracked.status)
        #expect(r.stderr == "")
        #expect(!r.log.contains { $0["type"] as? String == "missed" })
        let truth = try FixtureTruth(stdout: r.stdout).expectedSweeps
        for (k, expected) in truth.enumerated() where k < sweeps(r.log).count {
            #expect(FixtureTruth.pages(in: expected.region, of: sweeps(r.log)[k]) == expected.pages, "sweep \(k + 1)")
        }
    }
}
