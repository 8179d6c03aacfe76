import Foundation
import Testing

/// How the userfaultfd backend gets its descriptor without changing the
/// program: at an attach, a helper thread with a descriptor table of its
/// own (any number of threads; its clone refused; PageWatch dying while it
/// lives), and never a call a seccomp filter of the program's would kill.
@Suite(.serialized) struct UserfaultfdSetUpTests {
    /// A sandbox whose filter kills the process at `userfaultfd(2)`
    /// (`fx_no_uffd --kill`), installed while tracked: PageWatch judges the
    /// filter as it is installed and never makes the call in the exec'd
    /// image, which runs to its end on ptrace, exactly.
    @Test(arguments: ["uffd", "auto"])
    func aFilterThatKillsUserfaultfdNeverSeesTheCall(_ backend: String) throws {
        let program = [Harness.fixture("fx_no_uffd"), "--kill", Harness.fixture("fx_phases")]
        let untracked = try Harness.run(program)
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("kill-uffd-\(backend).jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0", "--backend", backend,
                "--stack-depth", "0", "--output", log, "--",
            ] + program)
        #expect(tracked.status == 0, "\(tracked.stderr)")
        #expect(tracked.stdout == untracked.stdout)
        if backend == "uffd" {
            #expect(tracked.stderr.contains("answers userfaultfd with SECCOMP_RET_KILL_PROCESS"), "\(tracked.stderr)")
        }
        let records = try Harness.readLog(log)
        let exec = records.first { $0["type"] as? String == "exec" }
        #expect(exec?["backends"] as? [String: String] == ["anonymous": "ptrace", "file": "ptrace"])
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        let sweeps = records.filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.count == truth.count)
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
    }

    /// Attached to a process with several threads: a helper thread with a
    /// descriptor table of its own makes the userfaultfd, so the program's
    /// table never holds it. Every phase exact with no fault taken (the
    /// workers' writes found by the scans), and after the detach the
    /// program counts its threads (no helper left in /proc/self/task) and
    /// opens a file: the same lines as untracked.
    @Test(arguments: ["uffd", "auto"])
    func severalThreadsAttachedThroughAHelperThread(_ backend: String) throws {
        let fixture = [Harness.fixture("fx_attach_threads")]
        let untracked = try FIFODriven(fixture, attach: nil)
        let tracked = try FIFODriven(
            fixture,
            attach: Self.attachThreads + ["--backend", backend, "--stack-depth", "0", "--verify-contents"])
        #expect(untracked.status == 0)
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        #expect(untracked.stdout.contains("threads 4 next descriptor "))
        #expect((tracked.log.first?["backends"] as? [String: String])?["anonymous"] == "uffd")
        #expect(tracked.log.dropFirst().first?["threads"] as? Int == 4)
        #expect(!tracked.log.contains { ["warning", "missed", "untracked"].contains($0["type"] as? String) })
        #expect(tracked.sweeps.allSatisfy { $0["faults"] as? Int == 0 })
        #expect(tracked.sweeps.map { $0["reason"] as? String } == ["attach", "signal", "signal", "detach"])
        try tracked.expectSweepsMatchTheTruth(of: untracked)
    }

    /// The same program under a seccomp filter that kills the process at
    /// `userfaultfd(2)` (as systemd's SystemCallFilter= does): PageWatch
    /// runs the filter first, makes no call and tracks on ptrace, exactly;
    /// the program runs to its end as without the tool.
    @Test func aSeccompFilterThatWouldKillKeepsTheAttachOnPtrace() throws {
        let fixture = [Harness.fixture("fx_no_uffd"), "--kill", Harness.fixture("fx_attach_threads")]
        let untracked = try FIFODriven(fixture, attach: nil)
        let tracked = try FIFODriven(fixture, attach: Self.attachThreads + ["--stack-depth", "0"])
        #expect(untracked.status == 0)
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        #expect(!tracked.log.contains { ["warning", "missed", "untracked"].contains($0["type"] as? String) })
        // On ptrace: the workers' writes were faults.
        #expect(tracked.sweeps.reduce(0) { $0 + ($1["faults"] as? Int ?? 0) } == 9)
        try tracked.expectSweepsMatchTheTruth(of: untracked)
    }

    /// The tracer dead while the helper thread exists (the test hook
    /// `PAGEWATCH_TEST_DIE_IN_HELPER`): right after its clone, before
    /// PageWatch touched it (it stops the process at the gadget's
    /// self-stop), or once its registers are set to leave. The guardian
    /// finds it in the gadget and lets it exit before it removes the
    /// gadget page: the program runs on with its own threads and
    /// descriptors, as untracked.
    @Test(arguments: ["clone", "registers"])
    func theTracerDeadWhileTheHelperLivesLeavesNoHelper(_ moment: String) throws {
        let untracked = try FIFODriven([Harness.fixture("fx_attach_threads")], attach: nil)
        let fifo = Harness.temporaryPath("fifo-\(UUID().uuidString)")
        #expect(mkfifo(fifo, 0o600) == 0)
        let fixture = try Background([Harness.fixture("fx_attach_threads"), fifo])
        #expect(fixture.waitFor("ready\n"))
        let log = Harness.temporaryPath("helper-\(moment).jsonl")
        let pagewatch = try Background(
            [Harness.pagewatch, "attach", "--output", log] + Self.attachThreads + WriteProtectBackendTests.uffd + [
                String(fixture.pid)
            ],
            environment: ["PAGEWATCH_TEST_DIE_IN_HELPER": moment])
        #expect(pagewatch.finish(timeout: 30) == 128 + SIGKILL, "pagewatch said: \(pagewatch.stderr)")
        let released = "pagewatch guardian: PageWatch died; pid \(fixture.pid) restored and released"
        #expect(pagewatch.waitFor(released, onStderr: true), "the guardian said: \(pagewatch.stderr)")
        #expect(throws: Never.self) { try writeToFIFO("g", fifo) }
        #expect(throws: Never.self) { try writeToFIFO("d", fifo) }
        #expect(fixture.finish(timeout: 30) == 0)
        #expect(fixture.stdout == untracked.stdout)
    }

    /// The helper's clone refused (RLIMIT_NPROC: the fixture runs as
    /// another user, limited to the four threads it has): a process with
    /// several threads stays on ptrace, with one line saying why, exactly.
    @Test func aRefusedHelperCloneKeepsSeveralThreadsOnPtrace() throws {
        let tools = ["/usr/bin/setpriv", "/usr/bin/prlimit"]
        // Root only (a limit on another user; root's own clones ignore it).
        guard getuid() == 0, tools.allSatisfy({ FileManager.default.isExecutableFile(atPath: $0) }) else { return }
        let untracked = try FIFODriven([Harness.fixture("fx_attach_threads")], attach: nil)
        let fifo = Harness.temporaryPath("fifo-\(UUID().uuidString)")
        #expect(mkfifo(fifo, 0o600) == 0 && chmod(fifo, 0o666) == 0)
        let limited = [
            tools[0], "--reuid", "54321", "--regid", "54321", "--clear-groups", tools[1], "--nproc=4:4",
        ]
        // A copy the other user can run: the checkout may be a directory
        // only its owner may enter (a clone into `mktemp -d`).
        let program = Harness.temporaryPath("fx_attach_threads-\(UUID().uuidString)")
        try FileManager.default.copyItem(atPath: Harness.fixture("fx_attach_threads"), toPath: program)
        #expect(chmod(program, 0o755) == 0)
        let fixture = try Background(limited + [program, fifo])
        #expect(fixture.waitFor("ready\n"))
        let log = Harness.temporaryPath("nproc-\(UUID().uuidString).jsonl")
        let pagewatch = try Background(
            [Harness.pagewatch, "attach", "--output", log] + Self.attachThreads + WriteProtectBackendTests.uffd + [
                String(fixture.pid)
            ])
        #expect(AttachTests().waitForLog(log, toContain: "\"reason\":\"attach\""))
        try writeToFIFO("g", fifo)
        #expect(pagewatch.finish() == 0)
        let lines = pagewatch.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(pagewatch.stderr)")
        #expect(
            lines.first?.contains(
                "clone(2) failed: Resource temporarily unavailable (EAGAIN), and pid \(fixture.pid) has 4 threads")
                == true, "\(pagewatch.stderr)")
        try writeToFIFO("d", fifo)
        #expect(fixture.finish() == 0)
        #expect(fixture.stdout == untracked.stdout)
        let records = try Harness.readLog(log)
        let sweeps = records.filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.reduce(0) { $0 + ($1["faults"] as? Int ?? 0) } == 9)
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        #expect(sweeps.count == truth.count)
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
    }

    static let attachThreads = [
        "--track", "0x2c4000000000-0x2c4000010000", "--sweep-signal", "USR2", "--interval", "0", "--sweeps", "3",
    ]
}
