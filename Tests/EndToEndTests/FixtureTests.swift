import Foundation
import Testing

/// Every fixture, untracked and under `pagewatch run`: the same stdout and
/// exit status, and per phase exactly the pages the fixture says it wrote.
@Suite(.serialized) struct FixtureTests {
    struct Case: CustomStringConvertible, Sendable {
        var fixture: String
        var extraArguments: [String] = []
        var expectedStatus: Int32
        /// Memory that must appear in no sweep (shared mappings are never tracked).
        var neverReported: Range<UInt64>? = nil
        var description: String { ([fixture] + extraArguments).joined(separator: " ") }
    }

    static let cases: [Case] = [
        Case(fixture: "fx_phases", expectedStatus: 0),
        Case(fixture: "fx_threads", expectedStatus: 0),
        Case(
            fixture: "fx_fixed_late", extraArguments: ["--track", "0x120000000000-0x120000010000"], expectedStatus: 0),
        Case(fixture: "fx_segv", expectedStatus: 128 + 11),
        Case(fixture: "fx_exit3", expectedStatus: 3),
        Case(fixture: "fx_sigframe", expectedStatus: 0),
        Case(fixture: "fx_syscall_out", expectedStatus: 0),
        Case(fixture: "fx_own_mprotect", expectedStatus: 0),
        Case(fixture: "fx_mmap_churn", expectedStatus: 0),
        Case(fixture: "fx_fork", expectedStatus: 0),
        Case(fixture: "fx_exec", expectedStatus: 0),
        Case(fixture: "fx_maxmap", expectedStatus: 0),
        Case(fixture: "fx_guard", expectedStatus: 0),
        Case(fixture: "fx_thread_churn", expectedStatus: 0),
        Case(fixture: "fx_exit_sweep", expectedStatus: 0),
        Case(fixture: "fx_stopcont", expectedStatus: 0),
        Case(fixture: "fx_sigaltstack", expectedStatus: 0),
        Case(fixture: "fx_blocked_reader", expectedStatus: 0),
        Case(fixture: "fx_robust", expectedStatus: 0),
        Case(fixture: "fx_jit", expectedStatus: 0),
        Case(fixture: "fx_trampoline", expectedStatus: 0),
        Case(fixture: "fx_slot_overflow", expectedStatus: 0),
        Case(fixture: "fx_segv_handler", expectedStatus: 0),
        Case(fixture: "fx_segv_action", expectedStatus: 0),
        Case(fixture: "fx_shared", expectedStatus: 0, neverReported: 0x2980_0000_0000..<0x2980_0000_4000),
        Case(fixture: "fx_stopless_sweep", expectedStatus: 0),
        // Attribution fixtures that print the truth too: a C++ and a Swift program.
        Case(fixture: "fx_cxx_writer", expectedStatus: 0),
        Case(fixture: "fx_swift_writer", expectedStatus: 0),
        // Followed children must leave the program's own report exact.
        Case(fixture: "fx_fork", extraArguments: ["--follow-forks"], expectedStatus: 0),
        Case(fixture: "fx_follow", extraArguments: ["--follow-forks"], expectedStatus: 0),
        // What unseen pages hold, with the fault path of each depth; and
        // pagewatch/1, which keeps them all in `ranges`.
        Case(fixture: "fx_zero", expectedStatus: 0),
        Case(fixture: "fx_zero", extraArguments: ["--stack-depth", "0"], expectedStatus: 0),
        Case(fixture: "fx_zero", extraArguments: ["--schema", "1"], expectedStatus: 0),
        // A large region written sparsely: holes written, read, and filled under MADV_HUGEPAGE.
        Case(fixture: "fx_sparse", expectedStatus: 0),
    ]

    @Test(arguments: cases)
    func dirtySetsMatchTheFixturesTruth(_ c: Case) throws {
        // At the default depth `auto` is ptrace; fx_zero at depth 0 is uffd.
        let uffd = c.extraArguments.contains("--stack-depth")
        try Self.checkAgainstTruth(c, backendArguments: [], backend: uffd ? "uffd" : "ptrace")
    }

    /// The same fixtures on the userfaultfd backend (which needs depth 0):
    /// page for page the same sweeps. Where the rules let it differ from
    /// ptrace (pinned pages reported only when written, a page read after
    /// its discard reported as zeros), no fixture's truth tells them apart.
    static let writeProtectCases = cases.filter { !$0.extraArguments.contains("--stack-depth") }

    @Test(arguments: writeProtectCases)
    func writeProtectBackendMatchesTheFixturesTruth(_ c: Case) throws {
        try Self.checkAgainstTruth(
            c, backendArguments: ["--backend", "uffd", "--stack-depth", "0"], backend: "uffd",
            unwritten: Self.reportedUnwrittenByPtrace[c.fixture] ?? [:])
    }

    /// Pages the fixtures' truth records because the ptrace path must count
    /// a call's output buffer written at the call's entry, written or not
    /// (rule 5's superset); asynchronous write-protection sees the kernel's
    /// own store, so it reports them only once written. By sweep (from 1).
    static let reportedUnwrittenByPtrace: [String: [Int: Set<UInt64>]] = [
        // nanosleep's `rem`, written only when the sleep is interrupted.
        "fx_syscall_out": [2: [11]],
        // The blocked read's buffer, in the sweep before the data arrives.
        "fx_blocked_reader": [2: [1]],
    ]

    static func checkAgainstTruth(
        _ c: Case, backendArguments: [String], backend: String, unwritten: [Int: Set<UInt64>] = [:],
        verifyContents: Bool = true
    ) throws {
        let program = Harness.fixture(c.fixture)
        let untracked = try Harness.run([program])
        #expect(untracked.status == c.expectedStatus)

        let log = Harness.temporaryPath("\(c.fixture).jsonl")
        // --verify-contents: a page changed with no write seen would be a
        // `missed` line on stderr and exit status 3.
        let tracked = try Harness.run(
            [Harness.pagewatch, "run"] + (verifyContents ? ["--verify-contents"] : [])
                + ["--sweep-signal", "USR2", "--interval", "0", "--output", log]
                + backendArguments + c.extraArguments + ["--", program])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stderr == untracked.stderr)
        #expect(tracked.status == untracked.status)

        let truth = try FixtureTruth(stdout: untracked.stdout)
        let records = try Harness.readLog(log)
        #expect(records.first?["type"] as? String == "start")
        let backends = records.first?["backends"] as? [String: String]
        #expect(backends == ["anonymous": backend, "file": "ptrace"])
        let schema1 = c.extraArguments.contains("--schema")
        #expect(records.first?["schema"] as? String == (schema1 ? "pagewatch/1" : "pagewatch/2"))
        #expect(records.last?["type"] as? String == "end")
        #expect(records.last?["exit_status"] as? Int == Int(c.expectedStatus))
        let pid = records.first?["pid"] as? Int
        let sweeps = records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
        #expect(sweeps.map { $0["seq"] as? Int } == Array(1...sweeps.count).map { $0 })

        // Phase K's writes are reported by sweep K: signal sweeps, then the exit sweep.
        // A fixture that dies after a raise (fx_segv) has one exit sweep more, empty.
        let expected = truth.expectedSweeps
        #expect(sweeps.count == expected.count || (c.expectedStatus > 128 && sweeps.count == expected.count + 1))
        for (k, sweep) in sweeps.enumerated() {
            var want = k < expected.count ? expected[k] : (expected.last!.region, Set<UInt64>())
            want.pages.subtract(unwritten[k + 1] ?? [])
            let got = FixtureTruth.pages(in: want.region, of: sweep)
            #expect(
                got == want.pages,
                "sweep \(k + 1) of \(c.fixture): extra \(got.subtracting(want.pages).sorted().prefix(20)), missing \(want.pages.subtracting(got).sorted().prefix(20))"
            )
            let isLast = k == sweeps.count - 1
            #expect(sweep["reason"] as? String == (isLast ? "exit" : "signal"))
            // What the unseen pages hold, where the fixture knows it.
            guard k < expected.count, let unseen = truth.expectedUnseen[k] else { continue }
            if c.fixture == "fx_zero" && k == 2 && Harness.swapIsActive {
                // Phase 3 pages out what it wrote: with swap, the sort must see it there.
                #expect(truth.segments[0].swapped[3] == Set(60...67), "fx_zero did not page out 60-67")
            }
            let zero = FixtureTruth.pages(in: want.region, of: sweep, fields: ["zero_ranges"])
            let file = FixtureTruth.pages(in: want.region, of: sweep, fields: ["file_ranges"])
            let data = FixtureTruth.pages(in: want.region, of: sweep, fields: ["ranges"])
            if schema1 {
                #expect(zero.isEmpty && file.isEmpty && data == want.pages, "sweep \(k + 1): pagewatch/1")
            } else {
                #expect(zero == unseen.zero, "sweep \(k + 1): zero_ranges")
                #expect(file == unseen.file, "sweep \(k + 1): file_ranges")
                #expect(data == want.pages.subtracting(unseen.zero).subtracting(unseen.file), "sweep \(k + 1): ranges")
            }
        }
        if let never = c.neverReported {
            for sweep in records where sweep["type"] as? String == "sweep" {
                #expect(FixtureTruth.pages(in: (never.lowerBound, never.upperBound), of: sweep).isEmpty)
            }
        }
        for sweep in sweeps {
            // Each count is of the pages its ranges cover; ranges are sorted
            // and coalesced, and the three fields disjoint.
            var all: [(UInt64, UInt64)] = []
            for (field, count) in [
                ("ranges", "dirty_pages"), ("zero_ranges", "zero_pages"), ("file_ranges", "file_pages"),
            ] {
                let ranges = (sweep[field] as? [[String]] ?? []).map {
                    (UInt64($0[0].dropFirst(2), radix: 16)!, UInt64($0[1].dropFirst(2), radix: 16)!)
                }
                #expect((sweep[count] as? Int ?? 0) == Int(ranges.reduce(0) { $0 + ($1.1 - $1.0) / 4096 }))
                #expect(field == "ranges" || (sweep[field] == nil) == (sweep[count] == nil))
                for (a, b) in zip(ranges, ranges.dropFirst()) { #expect(a.1 < b.0) }
                for r in ranges { #expect(r.0 % 4096 == 0 && r.1 % 4096 == 0 && r.0 < r.1) }
                all += ranges
            }
            all.sort { $0.0 < $1.0 }
            for (a, b) in zip(all, all.dropFirst()) { #expect(a.1 <= b.0, "overlapping fields") }
        }
    }

    @Test func intervalSweepsLeaveASleeperUnchanged() throws {
        let program = Harness.fixture("fx_sleeper")
        let untracked = try Harness.run([program])
        let log = Harness.temporaryPath("sleeper.jsonl")
        // --stack-depth 0: at the default depth the first sweep symbolizes
        // the writers' stacks, half a second in a debug build under load,
        // which can cover most of the 400 ms sleep (no interval sweep runs
        // meanwhile); then fewer than 3 of the 8 intervals had a sweep.
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--interval", "50ms", "--stack-depth", "0",
            "--output", log, "--", program,
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.stdout == "ready\nslept full\n")
        #expect(tracked.status == 0)
        let reasons = try Harness.readLog(log).compactMap { $0["reason"] as? String }
        #expect(reasons.filter { $0 == "interval" }.count >= 3)
        #expect(reasons.last == "exit")
    }

    /// The fault slots' data page is shared with PageWatch; a fork
    /// copies that mapping, so a followed child gets a page of its own at its
    /// first stop: with the parent's, the two processes' slots would share
    /// their words. The shell's subshell is a fork that runs no exec.
    @Test func aFollowedForkChildHasSlotsOfItsOwn() throws {
        let show = "while read l; do case $l in *pagewatch-slots*) echo %@ $l;; esac; done < /proc/self/maps"
        let script =
            show.replacingOccurrences(of: "%@", with: "parent")
            + "; (" + show.replacingOccurrences(of: "%@", with: "child") + ")"
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--follow-forks", "--interval", "0", "--output",
            Harness.temporaryPath("slots.jsonl"), "--", "/bin/sh", "-c", script,
        ])
        #expect(tracked.status == 0)
        let lines = tracked.stdout.split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        let parent = try #require(lines.first { $0.first == "parent" })
        let child = try #require(lines.first { $0.first == "child" })
        #expect(lines.count == 2)
        // range, perms, offset, device, inode, path
        #expect(parent.count >= 7 && child.count >= 7)
        #expect(parent[1] == child[1])  // the same address in both
        #expect(parent[2] == "rw-s" && child[2] == "rw-s")
        #expect(parent[5] != child[5], "the child's slots' page is its parent's memfd (inode \(parent[5]))")
        // Untracked, neither process has such a page.
        #expect(try Harness.run(["/bin/sh", "-c", script]).stdout == "")
    }

    /// `--follow-forks`: the fixture's child is a process of its own, with its
    /// own exact sweeps; its fork child and the shell system() runs are
    /// followed too, and every followed process has a `fork` and an `exit`.
    @Test func followedChildrenHaveTheirOwnSweeps() throws {
        let program = Harness.fixture("fx_follow")
        let untracked = try Harness.run([program])
        let log = Harness.temporaryPath("follow.jsonl")
        let tracked = try Harness.run([
            Harness.pagewatch, "run", "--follow-forks", "--sweep-signal", "USR2",
            "--interval", "0", "--output", log, "--", program,
        ])
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == 0)
        let records = try Harness.readLog(log)
        let main = try #require(records.first?["pid"] as? Int)
        let forks = records.filter { $0["type"] as? String == "fork" }
        // The child, its grandchild, and the shell of system().
        #expect(forks.count == 3)
        let child = try #require(forks.first { $0["parent"] as? Int == main }?["pid"] as? Int)
        let grandchild = try #require(forks.first { $0["parent"] as? Int == child }?["pid"] as? Int)
        let shell = try #require(forks.last { $0["parent"] as? Int == main }?["pid"] as? Int)
        #expect(Set([child, grandchild, shell]).count == 3)

        func sweeps(of pid: Int) -> [[String: Any]] {
            records.filter { $0["type"] as? String == "sweep" && $0["pid"] as? Int == pid }
        }
        func exitStatus(of pid: Int) -> Int? {
            records.first { $0["type"] as? String == "exit" && $0["pid"] as? Int == pid }?["exit_status"] as? Int
        }
        #expect(exitStatus(of: child) == 5)
        #expect(exitStatus(of: grandchild) == 0)
        #expect(exitStatus(of: shell) == 0)
        #expect(records.last?["type"] as? String == "end")
        #expect(records.last?["pid"] as? Int == main)

        let truth = try FixtureTruth(stdout: untracked.stdout, prefix: "child ").expectedSweeps
        let got = sweeps(of: child)
        #expect(got.map { $0["seq"] as? Int } == Array(1...truth.count).map { $0 })
        for (k, sweep) in got.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "child sweep \(k + 1)")
        }
        // The grandchild: one exit sweep, everything new to it; the shell
        // exec'd an image without the region.
        let region = truth[0].region
        #expect(sweeps(of: grandchild).map { FixtureTruth.pages(in: region, of: $0) } == [Set(0..<8)])
        #expect(sweeps(of: shell).allSatisfy { FixtureTruth.pages(in: region, of: $0).isEmpty })
        #expect(!sweeps(of: shell).isEmpty)
    }

    /// A program that forbids mprotect with a seccomp filter of
    /// its own. PageWatch reports what it saw up to the filter exactly, then
    /// lets the program go, unchanged, and says so.
    @Test(arguments: [[], ["seccomp"]])
    func ownSeccompFilterStopsTrackingCleanly(_ arguments: [String]) throws {
        let program = Harness.fixture("fx_own_seccomp")
        let untracked = try Harness.run([program] + arguments)
        #expect(untracked.stdout.contains("own mprotect denied\nok\n"))
        let log = Harness.temporaryPath("own_seccomp.jsonl")
        let tracked = try Harness.run(
            [
                Harness.pagewatch, "run", "--sweep-signal", "USR2", "--interval", "0",
                "--output", log, "--", program,
            ] + arguments)
        #expect(tracked.stdout == untracked.stdout)
        #expect(tracked.status == untracked.status)
        let records = try Harness.readLog(log)
        let pid = try #require(records.first?["pid"] as? Int)
        #expect(
            tracked.stderr == untracked.stderr
                + "pagewatch: pid \(pid): the program installed a seccomp filter that answers mprotect with SECCOMP_RET_ERRNO: tracking stopped; its later writes are not reported\n"
        )

        let truth = try FixtureTruth(stdout: untracked.stdout).expectedSweeps
        let sweeps = records.filter { $0["type"] as? String == "sweep" }
        #expect(sweeps.count == 3)
        #expect(sweeps.map { $0["reason"] as? String } == ["signal", "signal", "untracked"])
        for (k, sweep) in sweeps.enumerated() where k < truth.count {
            #expect(FixtureTruth.pages(in: truth[k].region, of: sweep) == truth[k].pages, "sweep \(k + 1)")
        }
        let types = records.compactMap { $0["type"] as? String }
        #expect(types.suffix(2) == ["untracked", "end"])
        #expect(records.last?["exit_status"] as? Int == 0)
    }

    @Test func summaryGoesToStderrWithoutOutput() throws {
        let r = try Harness.run([Harness.pagewatch, "run", "--sweep-signal", "USR2", "--", Harness.fixture("fx_exit3")])
        #expect(r.status == 3)
        #expect(r.stdout == "region 0x140000000000 0x140000004000\nphase 1 pages 0-3\nphase 2 pages 1\nok\n")
        #expect(r.stderr.contains("sweep  reason"))
        #expect(r.stderr.contains("program exited with status 3"))
    }

    /// With `--output -` the log owns stdout; the program writes to
    /// PageWatch's stderr instead, so the log can be piped into `report`.
    @Test func logToStdoutKeepsTheProgramsOutputApart() throws {
        let r = try Harness.run([
            Harness.pagewatch, "run", "--interval", "0", "--output", "-", "--",
            Harness.fixture("fx_exit3"),
        ])
        #expect(r.status == 3)
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.first?.hasPrefix("{\"type\":\"start\",\"schema\":\"pagewatch/2\"") == true)
        #expect(lines.last?.hasPrefix("{\"type\":\"end\"") == true)
        #expect(lines.allSatisfy { $0.hasPrefix("{") })
        let untracked = try Harness.run([Harness.fixture("fx_exit3")])
        #expect(r.stderr == untracked.stdout + untracked.stderr)
        let report = try Harness.run([Harness.pagewatch, "report", "-"], stdin: r.stdout)
        #expect(report.status == 0)
        #expect(report.stdout.contains("exited with status 3"))
    }
}
