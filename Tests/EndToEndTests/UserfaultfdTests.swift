import Foundation
import Testing

/// A program with its own userfaultfd (fx_userfaultfd): PageWatch must never
/// read a page the program's handler would have to supply (the handler may
/// be held at a ptrace stop: PageWatch and the program would wait for each
/// other forever; `Harness.run` ends a run that hangs and fails the test),
/// and the pages the handler fills with UFFDIO_COPY or UFFDIO_ZEROPAGE are
/// written by the kernel: reported, exactly as the fixture's truth says.
@Suite(.serialized) struct UserfaultfdTests {
    @Test(arguments: [["--stack-depth", "0"], []])
    func pagesTheHandlerFillsAreReportedAndNothingHangs(_ depth: [String]) throws {
        try FixtureTests().dirtySetsMatchTheFixturesTruth(
            FixtureTests.Case(fixture: "fx_userfaultfd", extraArguments: depth, expectedStatus: 0))
    }

    /// A whole mapping registered for missing pages after it was made: every
    /// page still asks the program's handler (fx_uffd_late), although
    /// PageWatch populated one page of the mapping before arming it.
    @Test func registeredAfterTheMappingEveryPageAsksTheHandler() throws {
        let untracked = try Harness.run([Harness.fixture("fx_uffd_late")])
        #expect(untracked.status == 0)
        #expect(untracked.stdout.contains("bytes ab ab ab ab ab ab ab ab\n"))
        let log = Harness.temporaryPath("uffd-late.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--interval", "0", "--output", log, "--",
                Harness.fixture("fx_uffd_late"),
            ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == 0, "\(tracked.stderr)")
        #expect(!(try Harness.readLog(log)).contains { $0["type"] as? String == "missed" })
    }

    /// Attached after the registration (learned from smaps), the same.
    @Test(arguments: [["--stack-depth", "0"], []])
    func attachedAfterTheRegistration(_ depth: [String]) throws {
        func drive(attaching: Bool) throws -> FIFODriven {
            try FIFODriven(
                [Harness.fixture("fx_userfaultfd")],
                attach: attaching
                    ? [
                        "--verify-contents", "--track", "0x370000000000-0x370000040000",
                        "--sweep-signal", "USR2", "--interval", "0", "--sweeps", "2",
                    ] + depth : nil)
        }
        let untracked = try drive(attaching: false)
        let tracked = try drive(attaching: true)
        #expect(untracked.status == 0)
        #expect(tracked.status == 0)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stdout.contains("copies 32 zeropages 16 "))
        let sweeps = tracked.sweeps
        #expect(sweeps.map { $0["reason"] as? String } == ["attach", "signal", "detach"])
        try tracked.expectSweepsMatchTheTruth(of: untracked)
        // The handler's fills are the kernel's writes, named by the ioctl
        // (writers are logged with call stacks, not at depth 0).
        guard depth.isEmpty else { return }
        let writers = Set(
            sweeps.flatMap { ($0["sites"] as? [[String: Any]]) ?? [] }
                .flatMap { ($0["frames"] as? [[String: Any]]) ?? [] }
                .compactMap { $0["function"] as? String })
        #expect(writers.contains("[kernel] UFFDIO_COPY"))
        #expect(writers.contains("[kernel] UFFDIO_ZEROPAGE"))
    }

    /// Pages the program write-protected with its userfaultfd stay so while
    /// PageWatch comes (attach) or sweeps (run): PageWatch never populates
    /// a page there (a write that would wait for the handler, which may be
    /// held at a stop), and the handler sees each of the program's write
    /// faults, no more (fx_uffd_wp).
    @Test(arguments: [["attach", "--stack-depth", "0"], ["attach"], ["run", "--stack-depth", "0"], ["run"]])
    func writeProtectedPagesAreNeverPopulated(_ mode: [String]) throws {
        func drive(_ pagewatch: [String]?) throws -> String {
            let log = Harness.temporaryPath("uffd-wp-\(UUID().uuidString).jsonl")
            let options = ["--verify-contents", "--output", log, "--interval", "20ms"] + mode.dropFirst()
            let launched = pagewatch?.first == "run"
            let fixture = try Background(
                launched
                    ? [Harness.pagewatch, "run"] + options + ["--", Harness.fixture("fx_uffd_wp")]
                    : [Harness.fixture("fx_uffd_wp")])
            #expect(fixture.waitFor("ready\n"))
            if pagewatch?.first == "attach" {
                let r = try Harness.run(
                    [Harness.pagewatch, "attach"] + options + ["--duration", "200ms", String(fixture.pid)], timeout: 30)
                #expect(r.status == 0, "\(r.stderr)")
                #expect(try Harness.readLog(log).last?["type"] as? String == "detach")
            } else if launched {
                usleep(200_000)  // sweeps while pages 4-7 are write-protected
            }
            fixture.send("g")
            #expect(fixture.finish(timeout: 30) == 0)
            if launched { #expect(!(try Harness.readLog(log)).contains { $0["type"] as? String == "missed" }) }
            return fixture.stdout
        }
        let untracked = try drive(nil)
        #expect(untracked.hasSuffix("wpfaults 4 sum 520\nok\n"), "\(untracked)")
        #expect(try drive(mode) == untracked)
    }

    /// Attached and detached again and again while the handler fills pages
    /// and the program drops them (MADV_DONTNEED) round after round: every
    /// attach ends in a detach, the program's checks all pass and it ends
    /// as without the tool.
    @Test func attachedAndDetachedWhileTheHandlerWorks() throws {
        let untracked = try Background([Harness.fixture("fx_userfaultfd"), "churn"])
        #expect(untracked.waitFor("ready\n"))
        usleep(100_000)
        untracked.send("stop")
        #expect(untracked.finish() == 0)
        #expect(untracked.stdout.hasSuffix("bad 0\nok\n"))

        let fixture = try Background([Harness.fixture("fx_userfaultfd"), "churn"])
        #expect(fixture.waitFor("ready\n"))
        var filledPagesReported = 0
        // Ten attaches at least; on a loaded machine a 40 ms attach may see
        // the program make no round, so more (at most 40) until one did.
        for i in 0..<40 {
            if i >= 10 && filledPagesReported > 0 { break }
            let log = Harness.temporaryPath("uffd-churn-\(UUID().uuidString).jsonl")
            let depth = i % 2 == 0 ? ["--stack-depth", "0"] : []
            let r = try Harness.run(
                [
                    Harness.pagewatch, "attach", "--verify-contents", "--output", log, "--interval", "5ms",
                    "--duration", "40ms",
                ] + depth + [String(fixture.pid)], timeout: 60)
            if r.status != 0 { Issue.record("attach \(i): status \(r.status): \(r.stderr)"); break }
            let records = try Harness.readLog(log)
            #expect(records.last?["type"] as? String == "detach", "attach \(i)")
            for sweep in records where sweep["type"] as? String == "sweep" && sweep["reason"] as? String != "attach" {
                filledPagesReported += FixtureTruth.pages(in: (0x3700_0001_0000, 0x3700_0004_0000), of: sweep).count
            }
        }
        // Pages the handler filled were reported while attached (the test exercised something).
        #expect(filledPagesReported > 0)
        fixture.send("stop")
        #expect(fixture.finish() == 0)
        #expect(fixture.stdout == untracked.stdout)
    }
}
