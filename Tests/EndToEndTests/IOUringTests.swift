import Foundation
import Testing

/// io_uring requests the kernel runs from its own context: their buffers in
/// tracked pages are un-armed at submission (`[kernel] io_uring`), and a
/// ring whose buffers cannot be known (SQPOLL) stops tracking cleanly.
@Suite(.serialized) struct IOUringTests {
    static let region = (start: UInt64(0x3600_0000_0000), end: UInt64(0x3600_0001_0000))

    static func sweepsOf(_ records: [[String: Any]]) -> [[String: Any]] {
        let pid = records.first?["pid"] as? Int
        return records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
    }

    /// Page indexes of `sweep` in the region attributed to the kernel's io_uring writes.
    static func ioUringPages(_ sweep: [String: Any]) -> Set<UInt64> {
        var pages = Set<UInt64>()
        for site in sweep["sites"] as? [[String: Any]] ?? [] {
            let frames = site["frames"] as? [[String: Any]] ?? []
            guard frames.first?["function"] as? String == "[kernel] io_uring" else { continue }
            pages.formUnion(FixtureTruth.pages(in: region, of: site))
        }
        return pages
    }

    @Test(arguments: [["--stack-depth", "0"], []])
    func readsIntoTrackedPagesCompleteAsUntracked(_ extra: [String]) throws {
        let program = Harness.fixture("fx_io_uring")
        let untracked = try Harness.run([program])
        #expect(untracked.status == 0)
        #expect(untracked.stdout.contains("read res 100 "))
        let log = Harness.temporaryPath("io_uring.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2", "--interval", "0",
                "--output", log,
            ] + extra + ["--", program])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stderr == untracked.stderr)
        #expect(tracked.status == untracked.status)

        let records = try Harness.readLog(log)
        let sweeps = Self.sweepsOf(records)
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        #expect(sweeps.count == truth.count)
        // At depth 0 `auto` may track this memory by userfaultfd, which sees
        // the kernel's own store: the READ still in flight at sweep 3 has
        // not written page 9 yet (the ptrace path counts a request's buffer
        // written from its submission on).
        let backends = records.first?["backends"] as? [String: String]
        let asyncWrites = backends?["anonymous"] == "uffd"
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            let got = FixtureTruth.pages(in: truth[k].region, of: sweep)
            let want = asyncWrites && k == 2 ? truth[k].pages.subtracting([9]) : truth[k].pages
            #expect(
                got == want,
                "sweep \(k + 1): extra \(got.subtracting(want).sorted()), missing \(want.subtracting(got).sorted())"
            )
        }
        #expect(!records.contains { $0["type"] as? String == "untracked" })
        if extra.isEmpty, sweeps.count >= 3 {
            // Phase 2's and 3's request buffers are the kernel's writes for io_uring.
            #expect(Self.ioUringPages(sweeps[1]) == [2, 3, 5, 7, 8, 11])
            #expect(Self.ioUringPages(sweeps[2]) == [9])
        }
    }

    @Test func sqpollStopsTrackingCleanly() throws {
        let program = Harness.fixture("fx_io_uring")
        let untracked = try Harness.run([program, "sqpoll"])
        #expect(untracked.stdout.contains("sqpoll read res 64 "))
        let log = Harness.temporaryPath("io_uring_sqpoll.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--verify-contents", "--sweep-signal", "USR2", "--interval", "0",
            "--output", log, "--", program, "sqpoll",
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status)
        let records = try Harness.readLog(log)
        let pid = try #require(records.first?["pid"] as? Int)
        #expect(
            tracked.stderr == untracked.stderr
                + "pagewatch: pid \(pid): io_uring with IORING_SETUP_SQPOLL: a kernel thread takes the program's requests without a syscall, so the buffers it writes cannot be known in time: tracking stopped; its later writes are not reported\n"
        )

        // Phase 1, then what was written before the ring's setup (page 3);
        // page 4, written by the kernel after the stop, is in no sweep.
        let sweeps = Self.sweepsOf(records)
        #expect(sweeps.map { $0["reason"] as? String } == ["signal", "untracked"])
        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        if sweeps.count == 2, truth.count == 2 {
            #expect(FixtureTruth.pages(in: truth[0].region, of: sweeps[0]) == truth[0].pages)
            #expect(FixtureTruth.pages(in: truth[1].region, of: sweeps[1]) == truth[1].pages.subtracting([4]))
        }
        let types = records.compactMap { $0["type"] as? String }
        #expect(types.suffix(2) == ["untracked", "end"])
        #expect(records.last?["exit_status"] as? Int == 0)
    }

    /// A ring set up before the attach, a read in flight on it: PageWatch
    /// cannot know it and does not track the process (the read completes
    /// as without it); one untracked record, one stderr line.
    @Test func attachingToARingInUseStopsTrackingCleanly() throws {
        func drive(attaching: Bool) throws -> (stdout: String, status: Int32, log: [[String: Any]], stderr: String) {
            let fixture = try Background([Harness.fixture("fx_io_uring"), "attach"])
            #expect(fixture.waitFor("ready\n"))
            let log = Harness.temporaryPath("io_uring_attach.jsonl")
            var pagewatch: Background?
            if attaching {
                pagewatch = try Background([
                    Harness.pagewatch, "attach", "--verify-contents", "--output", log, "--interval", "20ms",
                    String(fixture.pid),
                ])
                let deadline = Date().addingTimeInterval(30)
                while Date() < deadline,
                    !((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("\"untracked\"")
                {
                    usleep(1000)
                }
            }
            fixture.send("go\n")
            let status = fixture.finish()
            #expect(pagewatch?.finish() ?? 0 == 0)
            return (fixture.stdout, status, attaching ? try Harness.readLog(log) : [], pagewatch?.stderr ?? "")
        }
        let untracked = try drive(attaching: false)
        let tracked = try drive(attaching: true)
        #expect(untracked.status == 0)
        #expect(untracked.stdout.contains("read in flight res 64 "))
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status)
        let types = tracked.log.compactMap { $0["type"] as? String }
        #expect(types == ["start", "attach", "sweep", "untracked", "end"])
        let pid = tracked.log.first?["pid"] as? Int ?? 0
        #expect(
            tracked.stderr.hasPrefix(
                "pagewatch: pid \(pid): io_uring instance set up before the attach: its requests in flight cannot be known: tracking stopped; its later writes are not reported\n"
            ))
    }

    /// A real io_uring workload: a file copy with 32 requests in flight,
    /// heap buffers reused through malloc, frequent sweeps (many interrupt
    /// the program's wait for completions): the copy is exact, and no write
    /// was missed.
    @Test(arguments: [["--stack-depth", "0"], []])
    func copyProgramCopiesExactlyUnderFrequentSweeps(_ extra: [String]) throws {
        let source = Harness.temporaryPath("uring-cp-src")
        var bytes = [UInt8](repeating: 0, count: 6 << 20)
        var x: UInt64 = 0x9e37_79b9_7f4a_7c15
        for i in bytes.indices {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            bytes[i] = UInt8(truncatingIfNeeded: x)
        }
        #expect(FileManager.default.createFile(atPath: source, contents: Data(bytes)))
        let untrackedCopy = Harness.temporaryPath("uring-cp-dst0"), trackedCopy = Harness.temporaryPath("uring-cp-dst1")
        let program = Harness.fixture("fx_io_uring")
        let untracked = try Harness.run([program, "cp", source, untrackedCopy])
        #expect(untracked.stdout == "copied \(bytes.count) bytes\nok\n")
        let log = Harness.temporaryPath("io_uring_cp.jsonl")
        // --verify-contents: a write PageWatch missed (the kernel's, for a request) fails the run.
        let tracked = try Harness.run(
            [Harness.pagewatch, "run", "--verify-contents", "--interval", "2ms", "--output", log] + extra
                + ["--", program, "cp", source, trackedCopy])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status, "pagewatch's stderr: \(tracked.stderr.suffix(2000))")
        #expect(FileManager.default.contents(atPath: trackedCopy) == Data(bytes))
        let records = try Harness.readLog(log)
        #expect(!records.contains { $0["type"] as? String == "untracked" })
        #expect(records.filter { $0["type"] as? String == "sweep" }.count > 2)
    }
}
