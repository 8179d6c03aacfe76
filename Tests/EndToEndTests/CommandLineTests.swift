import Foundation
import Testing

/// Bad input: one clear line, the conventional status, nothing run.
@Suite struct CommandLineTests {
    func pagewatch(_ args: [String]) throws -> Harness.Result {
        try Harness.run([Harness.pagewatch] + args)
    }

    @Test(arguments: [
        (["run", "--track", "bogus", "--", "/bin/true"], "unknown --track SPEC 'bogus'"),
        (["run", "--track", "0x2000-0x1000", "--", "/bin/true"], "malformed range '0x2000-0x1000'"),
        (["run", "--track", "0xzz-0x1000", "--", "/bin/true"], "malformed range"),
        (["run", "--interval", "fast", "--", "/bin/true"], "invalid --interval 'fast'"),
        (["run", "--interval=-1s", "--", "/bin/true"], "invalid --interval"),
        (["run", "--interval", "-1", "--", "/bin/true"], "invalid --interval '-1'"),
        (["run", "--stack-depth", "-1", "/bin/true"], "invalid --stack-depth -1"),
        (["run", "--"], "missing PROGRAM"),
        (["run", "--intervall", "1s", "true"], "unknown option '--intervall'"),
        (["run", "--sweep-signal", "NOPE", "--", "/bin/true"], "invalid --sweep-signal 'NOPE'"),
        (["run", "--sweep-signal", "KILL", "--", "/bin/true"], "cannot be SIGKILL"),
        (["run", "--spin-wait", "2s", "--", "/bin/true"], "invalid --spin-wait '2s'"),
        (["run"], "missing PROGRAM"),
    ])
    func usageErrorsExitTwo(_ args: [String], _ message: String) throws {
        let r = try pagewatch(args)
        #expect(r.status == 2)
        #expect(r.stderr.hasPrefix("pagewatch: "))
        #expect(r.stderr.contains(message))
        #expect(r.stdout.isEmpty)
    }

    /// As strace and perf: the program starts at the first word that is not
    /// one of pagewatch's options, and everything after it is its own.
    @Test func theProgramNeedsNoDoubleDash() throws {
        let script = "echo \"$@\"; exit 4"
        for args in [
            ["run", "--interval", "0", "sh", "-c", script, "sh", "-x", "--interval", "5", "--"],
            ["run", "--interval", "0", "--", "sh", "-c", script, "sh", "-x", "--interval", "5", "--"],
        ] {
            let r = try pagewatch(args)
            #expect(r.stdout == "-x --interval 5 --\n", "\(args)")
            #expect(r.status == 4)
        }
    }

    /// `-o` is `--output`; an existing log is kept as NAME.old unless --force.
    @Test func anExistingLogIsKeptAsOld() throws {
        let log = Harness.temporaryPath("kept.jsonl")
        try? FileManager.default.removeItem(atPath: log + ".old")
        defer { try? FileManager.default.removeItem(atPath: log + ".old") }
        func command(_ path: String) throws -> String? {
            try Harness.readLog(path).first?["command"].flatMap { ($0 as? [String])?.last }
        }
        #expect(try pagewatch(["run", "-o", log, "echo", "first"]).status == 0)
        #expect(try pagewatch(["run", "-o", log, "echo", "second"]).status == 0)
        #expect(try command(log) == "second")
        #expect(try command(log + ".old") == "first")
        #expect(try pagewatch(["run", "--force", "--output", log, "echo", "third"]).status == 0)
        #expect(try command(log) == "third")
        #expect(try command(log + ".old") == "first")
        // Not a regular file: written as it is, nothing renamed.
        #expect(try pagewatch(["run", "-o", "/dev/null", "true"]).status == 0)
        #expect(!FileManager.default.fileExists(atPath: "/dev/null.old"))
        // A symlink to a regular file (/dev/stderr into the harness's file): written through, the link kept.
        let through = try pagewatch(["run", "-o", "/dev/stderr", "echo", "fourth"])
        #expect(through.status == 0)
        #expect(through.stderr.contains(#""command":["echo","fourth"]"#))
        #expect(!FileManager.default.fileExists(atPath: "/dev/stderr.old"))
    }

    /// The live view, in a real terminal (tmux): one status line while the
    /// program runs, gone before the summary; none with --quiet.
    @Test(arguments: [false, true])
    func statusLineAtATerminalOnly(quiet: Bool) throws {
        let session = "pagewatch-status-\(getpid())-\(quiet)"
        let done = Harness.temporaryPath("\(session).done")
        try? FileManager.default.removeItem(atPath: done)
        // A program that sweeps for about 2 s without a word of its own.
        let program = "python3 -c 'import time\nfor _ in range(20): time.sleep(0.1); bytearray(10**6)'"
        let command =
            "\(Harness.pagewatch) run \(quiet ? "--quiet " : "")--interval 200ms \(program); touch \(done); sleep 60"
        // Through system(3), not Foundation's Process: the tmux server stays
        // behind, and Process would wait for it as for a child.
        let pane = Harness.temporaryPath("\(session).pane")
        func capture() -> String {
            _ = system("tmux capture-pane -p -t \(session) > \(pane) 2>/dev/null")
            return (try? String(contentsOfFile: pane, encoding: .utf8)) ?? ""
        }
        let quoted = "'" + command.replacingOccurrences(of: "'", with: "'\\''") + "'"
        #expect(system("tmux new-session -d -s \(session) -x 200 -y 50 \(quoted) </dev/null >/dev/null 2>&1") == 0)
        defer { _ = system("tmux kill-session -t \(session) >/dev/null 2>&1") }
        usleep(1_500_000)
        let during = capture()
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: done) && Date() < deadline { usleep(100_000) }
        let after = capture()
        let statusLines = { (pane: String) in pane.split(separator: "\n").filter { $0.contains(" faults/s, log: ") } }
        if quiet {
            #expect(statusLines(during).isEmpty, "\(during)")
        } else {
            #expect(statusLines(during).count == 1, "\(during)")
            #expect(statusLines(during).first?.hasPrefix("pagewatch: ") == true)
            #expect(statusLines(during).first?.hasSuffix("log: a summary at the end") == true)
        }
        // Root keeps idle CPUs polling by default: a person at a terminal is told, once.
        let idleLine = "pagewatch: idle CPUs are kept polling while tracing"
        let told = access("/dev/cpu_dma_latency", W_OK) == 0 && !quiet
        #expect(after.components(separatedBy: idleLine).count - 1 == (told ? 1 : 0), "\(after)")
        // The summary stands alone: no status line left above or inside it.
        #expect(statusLines(after).isEmpty, "\(after)")
        #expect(after.split(separator: "\n").contains { $0.hasPrefix("pagewatch: pid ") })
        #expect(after.contains("program exited with status 0"))
    }

    @Test func missingProgramExits127LikeAShell() throws {
        let r = try pagewatch(["run", "--", "/nonexistent/program"])
        #expect(r.status == 127)
        #expect(r.stderr == "pagewatch: cannot run '/nonexistent/program': No such file or directory\n")
    }

    @Test func programFoundOnPath() throws {
        let r = try pagewatch(["run", "--interval", "0", "--", "sh", "-c", "echo hi; exit 5"])
        #expect(r.stdout == "hi\n")
        #expect(r.status == 5)
    }

    /// Scheduling off: the tracer always sleeps in waitpid; the
    /// same program output and the same sweeps as with polling.
    @Test func spinWaitZeroSleepsAndTracksAlike() throws {
        var ranges: [[String]] = []
        var outputs: [String] = []
        for spin in ["0", "50us"] {
            let log = Harness.temporaryPath("spin-\(spin).jsonl")
            // Its region only: how many stack pages a run dirties varies with where ASLR puts the stack.
            let r = try pagewatch([
                "run", "--spin-wait", spin, "--interval", "0", "--sweep-signal", "USR2",
                "--track", "0x100000000000-0x100000040000", "--output", log, "--", Harness.fixture("fx_phases"),
            ])
            #expect(r.status == 0)
            outputs.append(r.stdout)
            let sweeps = try Harness.readLog(log).filter { $0["type"] as? String == "sweep" }
            // Written or new (zero) pages alike: fx_phases' truth counts both.
            ranges.append(
                sweeps.map { s in
                    let pages = ["dirty_pages", "zero_pages", "file_pages"].reduce(0) { $0 + (s[$1] as? Int ?? 0) }
                    return "\(s["reason"] ?? "") \(pages)"
                })
        }
        #expect(outputs[0] == outputs[1])
        #expect(ranges[0] == ["signal 64", "signal 4", "signal 20", "signal 0", "exit 2"])  // fx_phases' truth
        #expect(ranges[1] == ranges[0])
    }

    /// `--idle-poll` (the default) holds a CPU latency request of 0 while
    /// the program runs (PageWatch, its parent, has `/dev/cpu_dma_latency`
    /// open and the kernel's target is 0), `--no-idle-poll` none; the
    /// request's descriptor is close-on-exec, so the program's descriptors
    /// are its own. (The target itself cannot be compared before and after:
    /// other tests run PageWatch meanwhile.)
    @Test(.enabled(if: access("/dev/cpu_dma_latency", R_OK | W_OK) == 0, "needs root: /dev/cpu_dma_latency"))
    func idlePollingIsHeldWhileTracingOnly() throws {
        let probe = [
            "--", "/bin/sh", "-c",
            "ls -l /proc/$PPID/fd | grep -c cpu_dma_latency; od -An -td4 -N4 /dev/cpu_dma_latency | tr -d ' '; ls /proc/self/fd | wc -l",
        ]
        let untracked = try Harness.run(Array(probe.dropFirst()))
        let on = try pagewatch(["run", "--interval", "0", "--output", "/dev/null"] + probe)
        let off = try pagewatch(["run", "--interval", "0", "--output", "/dev/null", "--no-idle-poll"] + probe)
        #expect(on.status == 0 && off.status == 0)
        let (linesOn, linesOff, linesUntracked) = (
            on.stdout.split(separator: "\n"), off.stdout.split(separator: "\n"),
            untracked.stdout.split(separator: "\n")
        )
        try #require(linesOn.count == 3 && linesOff.count == 3 && linesUntracked.count == 3)
        #expect(linesOn[0] == "1")  // PageWatch holds the request ...
        #expect(linesOn[1] == "0")  // ... and the kernel's target is 0
        #expect(linesOff[0] == "0")  // --no-idle-poll: no request
        #expect(linesOn[2] == linesUntracked[2] && linesOff[2] == linesUntracked[2])  // the program's descriptors
    }

    @Test func helpNamesWhatIsNeverTracked() throws {
        let r = try pagewatch(["run", "--help"])
        #expect(r.status == 0)
        #expect(try pagewatch(["run", "-h"]).stdout == r.stdout)
        #expect(r.stdout.contains("[vdso]"))
        #expect(r.stdout.contains("Shared mappings"))
        #expect(r.stdout.contains("PTRACE_O_EXITKILL"))
    }

    /// `--version` prints the one version string, the same that every log's
    /// `start` record carries as `pagewatch_version`.
    @Test func versionIsTheOneTheLogCarries() throws {
        let r = try pagewatch(["--version"])
        #expect(r.status == 0)
        #expect(r.stderr.isEmpty)
        let version = r.stdout.trimmingCharacters(in: .newlines)
        #expect(r.stdout == version + "\n")
        #expect(
            version.split(separator: ".").count == 3 && version.split(separator: ".").allSatisfy { UInt($0) != nil })
        let log = Harness.temporaryPath("version.jsonl")
        let run = try pagewatch(["run", "--interval", "0", "--output", log, "--", "/bin/true"])
        #expect(run.status == 0)
        let start = try #require(try Harness.readLog(log).first)
        #expect(start["type"] as? String == "start")
        #expect(start["pagewatch_version"] as? String == version)
    }

    @Test func unwritableOutputIsAClearError() throws {
        let r = try pagewatch(["run", "--output", "/nonexistent/dir/log.jsonl", "--", "/bin/true"])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("pagewatch: cannot open --output '/nonexistent/dir/log.jsonl'"))
    }
}

@Suite struct PtraceRefusedTests {
    /// Under `strace -f` the program is already traced when PageWatch seizes it.
    @Test func alreadyTracedIsOneClearLineWithAHint() throws {
        let r = try Harness.run([
            "/usr/bin/strace", "-f", "-o", "/dev/null", Harness.pagewatch, "run", "--",
            "/bin/true",
        ])
        #expect(r.status == 1)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first?.hasPrefix("pagewatch: ptrace(PTRACE_SEIZE, pid ") == true)
        #expect(lines.first?.hasSuffix("): Operation not permitted (EPERM)") == true)
        #expect(lines.last?.contains("CAP_SYS_PTRACE") == true)
        #expect(lines.last?.contains("kernel.yama.ptrace_scope") == true)
        #expect(lines.last?.contains("already be traced") == true)
    }
}
