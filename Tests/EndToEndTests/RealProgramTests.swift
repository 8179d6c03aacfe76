import Foundation
import Testing

/// Real programs from the machine, untracked and under
/// `pagewatch run --track writable --interval 50ms`: same stdout and status.
/// Without attribution (`--stack-depth 0`): in a debug build, unwinding every
/// fault and writing every sweep's sites 20 times a second slows python
/// several-fold (docs/performance.md); attribution has its own tests.
@Suite(.serialized) struct RealProgramTests {
    static let programs: [[String]] = [
        [
            "python3", "-c",
            """
            import json, hashlib
            d = {str(i): i * i for i in range(20000)}
            for i in range(0, 20000, 3): d.pop(str(i))
            s = json.dumps(d, sort_keys=True)
            print(len(d), hashlib.sha256(json.dumps(json.loads(s)).encode()).hexdigest())
            """,
        ],
        ["sh", "-c", "seq 1 200000 | sort -r | sha256sum"],
        // -n: no name and no mtime in the header, which would differ between the two runs.
        [
            "sh", "-c", "seq 1 300000 > \"$0\" && gzip -n -c \"$0\" | sha256sum",
            Harness.temporaryPath("gzip-input.txt"),
        ],
    ]

    @Test(arguments: programs)
    func sameOutputAsUntracked(_ command: [String]) throws {
        let untracked = try Harness.run(["/usr/bin/env"] + command)
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("real.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--track", "writable", "--interval", "50ms",
                "--stack-depth", "0", "--output", log, "--",
            ] + command, timeout: 300)
        #expect(tracked.stdout == untracked.stdout)
        #expect(
            tracked.status == untracked.status,
            "pagewatch's stderr: \(tracked.stderr.prefix(2000)) … \(tracked.stderr.suffix(1000))")
        let records = try Harness.readLog(log)
        #expect(records.last?["type"] as? String == "end")
        #expect(records.contains { $0["reason"] as? String == "exit" })
    }
}

/// Group stops: SIGSTOP stops the program as without the tool, SIGCONT resumes it.
@Suite struct GroupStopTests {
    func state(_ pid: Int32) -> Character? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        return text[text.index(close, offsetBy: 2)]
    }

    /// utime and stime (fields 14 and 15 of /proc/PID/stat).
    func cpuTime(_ pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 12 ? Array(fields[11...12]) : nil
    }

    @Test func stopAndContinue() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Harness.pagewatch)
        p.arguments = [
            "run", "--interval", "20ms", "--output", Harness.temporaryPath("stopcont.jsonl"), "--",
            Harness.fixture("fx_stopcont"),
        ]
        let out = Pipe()
        p.standardOutput = out
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        p.environment = environment
        try p.run()
        // The fixture is pagewatch's child.
        var child: Int32 = 0
        for _ in 0..<500 where child == 0 {
            if let text = try? String(
                contentsOfFile: "/proc/\(p.processIdentifier)/task/\(p.processIdentifier)/children",
                encoding: .utf8), let c = Int32(text.split(separator: " ").first ?? "")
            {
                child = c
            }
            usleep(2000)
        }
        #expect(child != 0)
        usleep(100_000)
        kill(child, SIGSTOP)
        usleep(200_000)
        #expect(state(child) == "t" || state(child) == "T")
        let before = cpuTime(child)
        usleep(200_000)
        // Stopped: no CPU time passes while it stays stopped. (Not the whole
        // stat line: its last field, the tracer's view of the stop, changes
        // when PageWatch answers the group stop.)
        #expect(before != nil)
        #expect(cpuTime(child) == before)
        kill(child, SIGCONT)
        #expect(Harness.finish(p, timeout: 60))
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0)
        #expect(text.hasSuffix("ok\n"))
        #expect(text.contains("ready\n"))
    }
}
