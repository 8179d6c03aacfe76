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

    /// fx_sparse's holes on the userfaultfd backend without
    /// `--verify-contents`, whose reads of every covered page map the zero
    /// page there (and a page table with it): writes into holes of
    /// populated and of empty 2 MiB pieces found, reads not reported, and
    /// a first write under `MADV_HUGEPAGE` one page, not a huge page's 512.
    @Test func holesOfALargeRegionAreExact() throws {
        try FixtureTests.checkAgainstTruth(
            FixtureTests.Case(fixture: "fx_sparse", expectedStatus: 0), backendArguments: Self.uffd, backend: "uffd",
            verifyContents: false)
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
        let log = Harness.temporaryPath("uffd-real-\(command[0]).jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--follow-forks", "--interval", "50ms",
                "--output", log,
            ] + Self.uffd + ["--", "/usr/bin/env"] + command, timeout: 300)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == 0, "pagewatch's stderr: \(tracked.stderr.suffix(3000))")
        let records = try Harness.readLog(log)
        #expect((records.first?["backends"] as? [String: String])?["anonymous"] == "uffd")
        // (A loaded machine may starve the program: that warning says so, nothing more.)
        let starved = { (r: [String: Any]) in (r["message"] as? String)?.contains("PageWatch's work took") == true }
        #expect(
            !records.contains { ["missed", "warning", "untracked"].contains($0["type"] as? String) && !starved($0) })
        let dirty = records.filter { $0["type"] as? String == "sweep" }.map { $0["dirty_pages"] as? Int ?? 0 }
        #expect(dirty.reduce(0, +) > 100)
    }

    /// Interval sweeps while the program's only thread sits in a call
    /// PageWatch cannot interrupt (fx_stopless_sweep: msgrcv for 500 ms
    /// after writing pages 4-7). On the userfaultfd backend they re-arm
    /// from outside, without a stop: pages 4-7 reported once, every sweep
    /// re-armed. On the ptrace path they can only report: the same pages
    /// again, `rearmed` false. Either way phase 3 (pages 4 and 5) is exact.
    @Test(arguments: ["uffd", "ptrace"])
    func sweepsDuringACallThatCannotBeInterrupted(_ backend: String) throws {
        let program = [Harness.fixture("fx_stopless_sweep"), "500"]
        let untracked = try Harness.run(program)
        #expect(untracked.status == 0)
        let log = Harness.temporaryPath("stopless-\(backend).jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2", "--interval", "50ms",
                "--presume", "never", "--backend", backend, "--stack-depth", "0", "--output", log, "--",
            ] + program, timeout: 60)
        #expect(tracked.stdout == untracked.stdout)
        #expect(Harness.withoutStarvationWarning(tracked.stderr) == untracked.stderr)
        #expect(tracked.status == 0)
        let truth = try FixtureTruth(stdout: untracked.stdout).segments[0]
        let records = try Harness.readLog(log)
        #expect((records.first?["backends"] as? [String: String])?["anonymous"] == backend)
        #expect(!records.contains { $0["type"] as? String == "missed" })
        var phases: [[[String: Any]]] = [[]]
        for s in records where s["type"] as? String == "sweep" {
            phases[phases.count - 1].append(s)
            if s["reason"] as? String != "interval" { phases.append([]) }
        }
        phases.removeLast()
        #expect(phases.count == 4)
        guard phases.count == 4 else { return }
        func pages(_ s: [String: Any]) -> Set<UInt64> { FixtureTruth.pages(in: truth.region, of: s) }
        func again(_ s: [String: Any]) -> Set<UInt64> {
            FixtureTruth.pages(in: truth.region, of: ["ranges": s["reported_again"] ?? []])
        }
        for (i, sweeps) in phases.enumerated() {
            let k = i + 1
            #expect(sweeps.reduce(into: Set()) { $0.formUnion(pages($1)) } == truth.phases[k] ?? [], "phase \(k)")
        }
        let blocked = phases[1].filter { $0["reason"] as? String == "interval" }
        #expect(blocked.count >= 3, "interval sweeps during the call: \(blocked.count)")
        if backend == "uffd" {
            #expect(phases[1].allSatisfy { $0["rearmed"] as? Bool ?? true })
            #expect(phases[1].allSatisfy { again($0).isEmpty })
            #expect(phases[1].map { pages($0).count }.reduce(0, +) == 4, "pages 4-7 reported once")
        } else {
            #expect(blocked.contains { $0["rearmed"] as? Bool == false })
            #expect(blocked.contains { again($0) == truth.phases[2] })
        }
        #expect(phases[2].allSatisfy { again($0).isEmpty })
    }
}
