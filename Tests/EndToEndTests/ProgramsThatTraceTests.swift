import Foundation
import Testing

/// Programs that use ptrace themselves. Under `run` the kernel refuses
/// their tracing (every process of the program is PageWatch's tracee), and
/// one warning says why and what to use; `attach` lets them trace.
@Suite(.serialized) struct ProgramsThatTraceTests {
    static let tracer = Harness.fixture("fx_tracer")
    static let region = "0x340000000000-0x340000008000"

    static func expectExact(_ log: [[String: Any]], truth stdout: String) throws {
        let sweeps = log.filter { $0["type"] as? String == "sweep" }
        let truth = try FixtureTruth(stdout: stdout).expectedSweeps
        #expect(sweeps.count == truth.count, "\(sweeps.map { $0["reason"] as? String ?? "?" })")
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
    }

    @Test(arguments: [("traceme", "PTRACE_TRACEME"), ("seize", "PTRACE_SEIZE")])
    func underRunTheKernelRefusesAndOneLineSaysWhy(_ mode: String, _ request: String) throws {
        let untracked = try Harness.run([Self.tracer, mode])
        #expect(untracked.status == 0)
        #expect(untracked.stderr == "tracing: ok\n")
        let log = Harness.temporaryPath("tracer-run-\(mode)-\(UUID().uuidString).jsonl")
        let r = try Harness.run([
            Harness.pagewatch, "run", "--verify-contents", "--output", log, "--sweep-signal", "USR2", "--interval", "0",
            "--",
            Self.tracer, mode,
        ])
        #expect(r.status == untracked.status)
        #expect(r.stdout == untracked.stdout)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 2, "\(r.stderr)")
        #expect(lines.first?.hasPrefix("pagewatch: warning: pid ") == true)
        #expect(lines.first?.contains(" calls ptrace(\(request)") == true)
        #expect(lines.first?.contains("which the kernel refuses (EPERM)") == true)
        #expect(lines.first?.hasSuffix("use `pagewatch attach PID` (no seccomp filter)") == true)
        #expect(lines.last == "tracing: \(request) failed, errno 1")
        try Self.expectExact(try Harness.readLog(log), truth: r.stdout)
    }

    /// Attached, the program traces its child as without PageWatch (the
    /// fork child is let go at its first stop); the word its PEEKDATA
    /// stores is the kernel's write, reported as such.
    @Test(arguments: ["traceme", "seize"])
    func underAttachTheProgramTraces(_ mode: String) throws {
        func drive(attaching: Bool) throws -> FIFODriven {
            try FIFODriven(
                [Self.tracer, mode],
                attach: attaching
                    ? [
                        "--verify-contents", "--track", Self.region, "--sweep-signal", "USR2", "--interval", "0",
                        "--sweeps", "2",
                    ] : nil)
        }
        let untracked = try drive(attaching: false)
        let tracked = try drive(attaching: true)
        #expect(untracked.status == 0)
        #expect(untracked.stderr == "tracing: ok\n")
        #expect(tracked.status == untracked.status)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stderr == untracked.stderr)
        try Self.expectExact(tracked.log, truth: untracked.stdout)
        let phase2 = tracked.log.filter { $0["type"] as? String == "sweep" }.dropFirst().first
        let sites = phase2?["sites"] as? [[String: Any]] ?? []
        let peeked = sites.first { site in
            (site["ranges"] as? [[String]])?.contains(["0x340000004000", "0x340000005000"]) == true
        }
        #expect((peeked?["frames"] as? [[String: Any]])?.first?["function"] as? String == "[kernel] ptrace")
    }

    static let hasStrace = FileManager.default.isExecutableFile(atPath: "/usr/bin/strace")

    /// strace itself: refused under run with the one line; attached to a
    /// shell that starts it later, it traces its command completely.
    @Test(.enabled(if: hasStrace)) func strace() throws {
        let run = try Harness.run([
            Harness.pagewatch, "run", "--output", "/dev/null", "--", "/usr/bin/strace", "-o", "/dev/null", "/bin/true",
        ])
        #expect(run.status != 0)
        #expect(run.stderr.split(separator: "\n").filter { $0.hasPrefix("pagewatch:") }.count == 1)
        #expect(run.stderr.contains("`pagewatch attach PID`"))

        let out = Harness.temporaryPath("strace-\(UUID().uuidString).txt")
        let shell = try Background([
            "/bin/sh", "-c", "echo ready; read go; strace -f -o \"$0\" /bin/sh -c 'echo traced'", out,
        ])
        #expect(shell.waitFor("ready\n"))
        let log = Harness.temporaryPath("strace-attach-\(UUID().uuidString).jsonl")
        let pagewatch = try Background([
            Harness.pagewatch, "attach", "--output", log, "--interval", "50ms", String(shell.pid),
        ])
        #expect(AttachTests().waitForLog(log, toContain: "\"reason\":\"attach\""))
        shell.send("go\n")
        #expect(shell.finish() == 0)
        #expect(pagewatch.finish() == 0)
        #expect(shell.stdout == "ready\ntraced\n")
        #expect(pagewatch.stderr == "pagewatch: pid \(shell.pid) ended while attached (status 0)\n")
        let trace = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        #expect(trace.contains("execve(\"/bin/sh\""))
        #expect(trace.contains("+++ exited with 0 +++"))
    }

    /// Attached to strace while it traces: its tracee stays its own, and it
    /// sees every call as without PageWatch (the same count of `write`s).
    @Test(.enabled(if: hasStrace)) func attachedToStraceWhileItTraces() throws {
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.1; done"
        func drive(attaching: Bool) throws -> (stdout: String, status: Int32, writes: Int) {
            let out = Harness.temporaryPath("strace-running-\(UUID().uuidString).txt")
            let strace = try Background([
                "/usr/bin/strace", "-f", "-e", "trace=write", "-o", out, "/bin/sh", "-c", "echo ready; " + script,
            ])
            #expect(strace.waitFor("ready\n"))
            if attaching {
                let log = Harness.temporaryPath("strace-running-\(UUID().uuidString).jsonl")
                let r = try Harness.run([
                    Harness.pagewatch, "attach", "--output", log, "--interval", "50ms", "--duration", "400ms",
                    String(strace.pid),
                ])
                #expect(r.status == 0)
                #expect(r.stderr == "")
            }
            let status = strace.finish()
            let trace = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
            return (
                strace.stdout, status, trace.split(separator: "\n").filter { $0.contains("write(1, \"line ") }.count
            )
        }
        let untracked = try drive(attaching: false)
        let tracked = try drive(attaching: true)
        #expect(untracked.status == 0)
        #expect(untracked.writes == 10)
        #expect(tracked.status == untracked.status)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.writes == untracked.writes)
    }
}
