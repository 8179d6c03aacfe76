import Foundation
import Testing

/// A log never lost silently: every write error of the log or of a report
/// is one line and a non-zero exit, the program finishing as without
/// PageWatch; a cut log is read up to its last whole line; SIGTERM and
/// SIGHUP to `run` are the program's, and the log still ends with `end`.
@Suite(.serialized) struct LogSafetyTests {
    static let phases = [Harness.fixture("fx_phases")]

    /// The stderr lines, without the empty one after the last newline.
    static func lines(_ text: String) -> [Substring] { text.split(separator: "\n") }

    @Test func logOnAFullDeviceIsOneLineAndTheProgramFinishesUntracked() throws {
        let untracked = try Harness.run(Self.phases)
        let r = try Harness.run(
            [Harness.pagewatch, "run", "--output", "/dev/full", "--sweep-signal", "USR2", "--"] + Self.phases)
        #expect(r.status == 1)
        #expect(r.stdout == untracked.stdout)
        #expect(untracked.status == 0)
        #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("pagewatch: cannot write the log to '/dev/full': No space left on device (ENOSPC)"))
    }

    @Test func logOnAFullStdoutIsOneLine() throws {
        // The program writes its own output elsewhere: the log alone goes to /dev/full.
        let out = Harness.temporaryPath("full-stdout-\(UUID().uuidString).txt")
        let r = try Harness.run([
            "/bin/sh", "-c",
            "exec \"$0\" run --output - --sweep-signal USR2 -- sh -c '\"$1\" > \"$2\"' sh \"$1\" \"$2\" > /dev/full",
            Harness.pagewatch, Self.phases[0], out,
        ])
        let untracked = try Harness.run(Self.phases)
        #expect(r.status == 1)
        #expect(
            Self.lines(r.stderr) == [
                "pagewatch: cannot write the log to 'stdout': No space left on device (ENOSPC); tracking stopped, the program runs on untracked"
            ])
        #expect((try? String(contentsOfFile: out, encoding: .utf8)) == untracked.stdout)
    }

    /// A file-size limit cuts the log in the middle of a sweep's line, as a
    /// disk filling up does: the program runs on, the log keeps its whole
    /// lines only, and `report` reads it.
    @Test func logCutByAFileSizeLimitKeepsItsWholeLines() throws {
        let untracked = try Harness.run(Self.phases)
        let log = Harness.temporaryPath("fsize-\(UUID().uuidString).jsonl")
        // 16 blocks (512 bytes each in dash, 1024 in bash): the start record
        // fits, the first sweep's line (about 30 KB with its sites) does not.
        let r = try Harness.run(
            [
                "/bin/sh", "-c", "ulimit -f 16; exec \"$@\"", "sh", Harness.pagewatch, "run", "--output", log,
                "--sweep-signal", "USR2", "--",
            ] + Self.phases)
        #expect(r.status == 1)
        #expect(r.stdout == untracked.stdout)
        #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("pagewatch: cannot write the log to '\(log)': File too large (EFBIG)"))
        let text = try String(contentsOfFile: log, encoding: .utf8)
        #expect(text.hasSuffix("\n"))
        #expect(text.utf8.count <= 16 * 1024)
        #expect(text.split(separator: "\n").count == 1)  // the start record alone: the sweep's line was cut off
        let report = try Harness.run([Harness.pagewatch, "report", log])
        #expect(report.status == 0)
        #expect(report.stderr == "")
    }

    /// attach: PageWatch detaches (the program runs on as it would) and exits 1.
    @Test func attachWithAnUnwritableLogDetaches() throws {
        let untracked = try Harness.run([Harness.fixture("fx_busy"), "1500"])
        let fixture = try Background([Harness.fixture("fx_busy"), "1500"])
        #expect(fixture.waitFor("ready\n"))
        let r = try Harness.run([
            Harness.pagewatch, "attach", "--interval", "20ms", "--output", "/dev/full", String(fixture.pid),
        ])
        #expect(r.status == 1)
        #expect(Self.lines(r.stderr).count == 1, "\(r.stderr)")
        #expect(r.stderr.hasPrefix("pagewatch: cannot write the log to '/dev/full': No space left on device (ENOSPC)"))
        #expect(AttachTests.tracer(of: fixture.pid) == 0)
        #expect(fixture.finish() == 0)
        #expect(fixture.stdout == untracked.stdout)
    }

    func record() throws -> String {
        let log = Harness.temporaryPath("whole-\(UUID().uuidString).jsonl")
        let r = try Harness.run(
            [Harness.pagewatch, "run", "--output", log, "--sweep-signal", "USR2", "--"] + Self.phases)
        #expect(r.status == 0)
        return log
    }

    @Test func reportToAFullDeviceFails() throws {
        let log = try record()
        let toFile = try Harness.run([Harness.pagewatch, "report", "--output", "/dev/full", log])
        #expect(toFile.status == 1)
        #expect(
            Self.lines(toFile.stderr) == [
                "pagewatch: cannot write the report to '/dev/full': No space left on device (ENOSPC)"
            ])
        for format in ["text", "html", "folded"] {
            let toStdout = try Harness.run([
                "/bin/sh", "-c", "exec \"$@\" > /dev/full", "sh", Harness.pagewatch, "report", "--format", format, log,
            ])
            #expect(toStdout.status == 1)
            #expect(
                Self.lines(toStdout.stderr).last
                    == "pagewatch: cannot write the report to stdout: No space left on device (ENOSPC)")
        }
    }

    /// A log cut inside its last line reads as the same log without that
    /// line, with one warning naming it.
    @Test func aLogCutMidLineIsReadToItsLastWholeLine() throws {
        let log = try record()
        let text = try String(contentsOfFile: log, encoding: .utf8)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        #expect(lines.count >= 4)
        let cutLast = lines.removeLast()
        let whole = Harness.temporaryPath("whole-part-\(UUID().uuidString).jsonl")
        let cut = Harness.temporaryPath("cut-\(UUID().uuidString).jsonl")
        try (lines.joined(separator: "\n") + "\n").write(toFile: whole, atomically: false, encoding: .utf8)
        try (lines.joined(separator: "\n") + "\n" + cutLast.prefix(cutLast.count / 2)).write(
            toFile: cut, atomically: false, encoding: .utf8)
        let expected = try Harness.run([Harness.pagewatch, "report", whole])
        let got = try Harness.run([Harness.pagewatch, "report", cut])
        #expect(got.status == 0)
        #expect(got.stdout == expected.stdout.replacingOccurrences(of: whole, with: cut))
        #expect(
            Self.lines(got.stderr) == [
                "pagewatch: warning: \(cut):\(lines.count + 1): the last line is cut mid-record (no newline, not JSON); read up to line \(lines.count)"
            ])
        // A cut anywhere else is still an error: only the last line can be an unfinished write.
        let broken = Harness.temporaryPath("broken-\(UUID().uuidString).jsonl")
        var middle = lines
        middle[1] = String(middle[1].prefix(10))
        try (middle.joined(separator: "\n") + "\n").write(toFile: broken, atomically: false, encoding: .utf8)
        let refused = try Harness.run([Harness.pagewatch, "report", broken])
        #expect(refused.status == 1)
        #expect(refused.stderr.hasPrefix("pagewatch: \(broken):2: not a JSON object"))
    }

    /// fx_term handles SIGTERM and SIGHUP and exits 43: sent to `pagewatch
    /// run`, the signal reaches the program, which ends as when sent to it
    /// untracked; the log is whole and exact.
    @Test(arguments: [SIGTERM, SIGHUP])
    func terminationSignalsGoToTheProgram(_ sig: Int32) throws {
        func drive(tracked: Bool) throws -> (stdout: String, stderr: String, status: Int32, log: [[String: Any]]) {
            let log = Harness.temporaryPath("term-\(sig)-\(UUID().uuidString).jsonl")
            let argv =
                tracked
                ? [
                    Harness.pagewatch, "run", "--output", log, "--sweep-signal", "USR2", "--interval", "0", "--",
                    Harness.fixture("fx_term"),
                ] : [Harness.fixture("fx_term")]
            let p = try Background(argv)
            #expect(p.waitFor("waiting\n"))
            kill(p.pid, sig)
            let status = p.finish()
            return (p.stdout, p.stderr, status, tracked ? try Harness.readLog(log) : [])
        }
        let untracked = try drive(tracked: false)
        let tracked = try drive(tracked: true)
        #expect(untracked.status == 43)
        #expect(tracked.status == untracked.status)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stdout.contains(sig == SIGTERM ? "got SIGTERM\n" : "got SIGHUP\n"))
        #expect(tracked.stderr == "")
        let types = tracked.log.compactMap { $0["type"] as? String }
        #expect(types.last == "end")
        #expect(tracked.log.last?["exit_status"] as? Int == 43)
        let sweeps = tracked.log.filter { $0["type"] as? String == "sweep" }
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        #expect(sweeps.count == truth.count)
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
    }
}

/// A busy multi-threaded program killed from outside (SIGKILL) at any
/// moment, an injection into its leader included: `pagewatch run` ends as
/// the program did, with its log whole. The kernel reports a killed leader
/// only once every other thread is reaped, whose exit stops wait for
/// PageWatch; before `Wait.nextUnlessDead` an injection's wait on it hung
/// both (about one kill in twenty), and a leader reaped during one ended the
/// run in an ECHILD error (one in ten).
@Suite struct KilledFromOutsideTests {
    /// At the default depth (ptrace) and at depth 0 (`auto`: userfaultfd where the kernel has it).
    @Test(arguments: [[], ["--stack-depth", "0"]])
    func aBusyProgramKilledAtAnyMomentEndsTheRun(_ options: [String]) throws {
        for round in 0..<12 {
            let log = Harness.temporaryPath("killed-\(round)-\(UUID().uuidString).jsonl")
            let p = try Background(
                [Harness.pagewatch, "run", "--output", log, "--interval", "20ms"] + options + [
                    "--", Harness.fixture("fx_steady_writers"), "stdin",
                ])
            #expect(p.waitFor("ready\n"), "round \(round)")
            usleep(UInt32(5_000 + round * 17_000))  // other moments of its rounds each time
            let program = Harness.descendants(of: p.pid).first {
                (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix("fx_steady") == true
            }
            let pid = try #require(program, "round \(round): the program is not below pagewatch")
            kill(pid, SIGKILL)
            let status = p.finish(timeout: 30)
            #expect(status == 128 + SIGKILL, "round \(round): \(p.stderr.suffix(500))")
            let records = try Harness.readLog(log)
            #expect(records.last?["type"] as? String == "end", "round \(round)")
            #expect(records.last?["signal"] as? Int == Int(SIGKILL), "round \(round)")
            #expect(records.contains { $0["type"] as? String == "sweep" && $0["reason"] as? String == "exit" })
        }
    }
}
