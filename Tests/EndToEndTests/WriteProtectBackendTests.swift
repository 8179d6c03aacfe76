import Foundation
import Testing

/// `--backend uffd` beyond the fixtures' truth (FixtureTests runs every
/// fixture on it): its refusals, its fallback to ptrace, and a detach that
/// leaves nothing of it in the program.
@Suite(.serialized) struct WriteProtectBackendTests {
    static let uffd = ["--backend", "uffd", "--stack-depth", "0"]

    @Test func writersAreNotAttributedSoADepthIsRefused() throws {
        let r = try Harness.run([Harness.pagewatch, "run", "--backend", "uffd", "--", "/bin/true"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("--backend uffd records no writer"), "\(r.stderr)")
        let bad = try Harness.run([Harness.pagewatch, "run", "--backend", "mprotect", "--", "/bin/true"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("invalid --backend 'mprotect' (expected auto, ptrace or uffd)"), "\(bad.stderr)")
    }

    /// A program whose sandbox fails userfaultfd(2) (fx_no_uffd execs
    /// fx_phases under such a seccomp filter): tracked on the ptrace path,
    /// exactly; `uffd` says so in one warning (stderr and the log), `auto` not at all.
    @Test(arguments: ["uffd", "auto"])
    func aForbiddenUserfaultfdFallsBackToPtrace(_ backend: String) throws {
        let program = [Harness.fixture("fx_no_uffd"), Harness.fixture("fx_phases")]
        let untracked = try Harness.run(program)
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("no-uffd-\(backend).jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2", "--interval", "0",
                "--backend", backend, "--stack-depth", "0", "--output", log, "--",
            ] + program)
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        let records = try Harness.readLog(log)
        let warnings = records.filter { $0["type"] as? String == "warning" }.compactMap { $0["message"] as? String }
        if backend == "uffd" {
            let lines = tracked.stderr.split(separator: "\n")
            #expect(lines.count == 1, "\(tracked.stderr)")
            #expect(lines.first?.hasPrefix("pagewatch: warning: --backend uffd: userfaultfd(2) in pid ") == true)
            #expect(lines.first?.hasSuffix("(EPERM); write tracking stays on the ptrace path") == true)
            #expect(warnings.count == 1)
        } else {
            #expect(tracked.stderr == untracked.stderr)
            #expect(warnings.isEmpty)
        }
        // The exec (before any sweep) is said, with the new image's backends.
        #expect((records.first?["backends"] as? [String: String])?["anonymous"] == "uffd")
        let execs = records.filter { $0["type"] as? String == "exec" }
        #expect(execs.count == 1)
        #expect(execs.first?["backends"] as? [String: String] == ["anonymous": "ptrace", "file": "ptrace"])
        // The exec'd image, on ptrace: faults taken, sweeps exact.
        #expect((records.last?["faults"] as? Int ?? 0) > 0)
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        let sweeps = records.filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.count == truth.count)
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
    }

    /// Attached on the userfaultfd backend and detached: the program keeps
    /// no registration (no `uw` in smaps' VmFlags), no userfaultfd
    /// descriptor, and finishes as without the tool.
    @Test func aDetachLeavesNoRegistrationAndNoDescriptor() throws {
        let untracked = try Background([Harness.fixture("fx_busy"), "stdin"])
        #expect(untracked.waitFor("ready\n"))
        usleep(50_000)
        untracked.send("x")
        #expect(untracked.finish() == 0)

        let fixture = try Background([Harness.fixture("fx_busy"), "stdin"])
        #expect(fixture.waitFor("ready\n"))
        let log = Harness.temporaryPath("uffd-detach.jsonl")
        let r = try Harness.run(
            [
                Harness.pagewatch, "attach", "--verify-contents", "--interval", "20ms", "--duration", "300ms",
                "--output", log,
            ] + Self.uffd + [String(fixture.pid)], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        let records = try Harness.readLog(log)
        #expect((records.first?["backends"] as? [String: String])?["anonymous"] == "uffd")
        #expect(records.last?["type"] as? String == "detach")
        #expect(!records.contains { $0["type"] as? String == "warning" || $0["type"] as? String == "missed" })
        // Pages written by the running program were found by the scans.
        let later = records.filter { $0["type"] as? String == "sweep" && $0["reason"] as? String == "interval" }
        #expect(later.contains { ($0["dirty_pages"] as? Int ?? 0) > 0 })

        let smaps = try String(contentsOfFile: "/proc/\(fixture.pid)/smaps", encoding: .utf8)
        let registered = smaps.split(separator: "\n").filter {
            $0.hasPrefix("VmFlags:") && $0.split(separator: " ").contains("uw")
        }
        #expect(registered.isEmpty, "still registered: \(registered)")
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(fixture.pid)/fd")) ?? []
        let links = fds.compactMap {
            try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(fixture.pid)/fd/\($0)")
        }
        #expect(!links.contains { $0.contains("userfaultfd") }, "\(links)")
        fixture.send("x")
        #expect(fixture.finish() == 0)
        #expect(fixture.stdout == untracked.stdout)
    }

    /// Real programs on the userfaultfd backend, checked by
    /// `--verify-contents`: python, and a shell pipeline whose processes
    /// are followed (each fork child on ptrace until its exec makes it a
    /// userfaultfd of its own). The same output, no page changed unseen.
    @Test(arguments: [
        ["python3", "-c", "d = {str(i): i * i for i in range(50000)}\nprint(sum(len(k) for k in sorted(d)))"],
        ["sh", "-c", "seq 1 200000 | sort -r | sha256sum"],
    ])
    func realProgramsMissNothing(_ command: [String]) throws {
        let untracked = try Harness.run(["/usr/bin/env"] + command)
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("uffd-real.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--follow-forks", "--interval", "50ms",
                "--output", log,
            ] + Self.uffd + ["--", "/usr/bin/env"] + command, timeout: 300)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == 0, "pagewatch's stderr: \(tracked.stderr.suffix(3000))")
        let records = try Harness.readLog(log)
        #expect((records.first?["backends"] as? [String: String])?["anonymous"] == "uffd")
        #expect(!records.contains { ["missed", "warning", "untracked"].contains($0["type"] as? String) })
        let dirty = records.filter { $0["type"] as? String == "sweep" }.map { $0["dirty_pages"] as? Int ?? 0 }
        #expect(dirty.reduce(0, +) > 100)
    }
}
