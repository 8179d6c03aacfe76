import Foundation
import Glibc
import Synchronization
import Testing
import PageWatchKit

/// The library as a test author uses it: run a fixture that knows which
/// pages it writes in which phase (fixtures/README.md), and check the write
/// events and sweeps against that truth, exactly.
@Suite(.serialized) struct WatchedProgramTests {
    /// Where SwiftPM put the fixtures: beside the test bundle.
    static func fixture(_ name: String) -> String {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent(name).path
    }

    /// The fixture's own truth: page indexes (relative to its region) written in each phase.
    static func truth(_ output: String) -> [Int: Set<UInt64>] {
        var phases: [Int: Set<UInt64>] = [:]
        for line in output.split(separator: "\n") where line.hasPrefix("phase ") {
            let f = line.split(separator: " ", omittingEmptySubsequences: false)
            var pages = Set<UInt64>()
            if f.count == 4 {
                for item in f[3].split(separator: ",") {
                    let bounds = item.split(separator: "-").map { UInt64($0)! }
                    pages.formUnion(bounds[0]...bounds[bounds.count - 1])
                }
            }
            phases[Int(f[1])!] = pages
        }
        return phases
    }

    /// The same program run without PageWatch: its exit status and stdout.
    static func untracked(_ argv: [String]) throws -> (status: Int32, output: String) {
        var template = Array("/tmp/pagewatchkit-tests-XXXXXX".utf8CString)
        let out = mkstemp(&template)
        try #require(out >= 0)
        unlink(template)
        defer { close(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, out, 1)
        // As from a shell: no signal blocked (test threads block some).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let cArgs = cStrings(argv), cEnvironment = cStrings(ProcessInfo.processInfo.environment.map { "\($0)=\($1)" })
        defer { (cArgs + cEnvironment).forEach { free($0) } }
        try #require(posix_spawn(&pid, argv[0], &actions, &attributes, cArgs, cEnvironment) == 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let shellStatus = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let size = Int(lseek(out, 0, SEEK_END))
        var bytes = [UInt8](repeating: 0, count: size)
        _ = pread(out, &bytes, size, 0)
        return (shellStatus, String(decoding: bytes, as: UTF8.self))
    }

    /// A C `argv`/`envp`: copies, then NULL. Free each after use.
    static func cStrings(_ strings: [String]) -> [UnsafeMutablePointer<CChar>?] { strings.map { strdup($0) } + [nil] }

    /// Pages of `[base, base + count pages)` as indexes, for comparing with a fixture's truth.
    static func indexes(_ pages: [UInt64], base: UInt64) -> Set<UInt64> {
        Set(pages.map { ($0 - base) / pageSize })
    }

    // MARK: - Phases and pages

    /// fx_phases: one thread writes 1,5,9,40 in phase 2, 10-29 in phase 3,
    /// nothing in phase 4, 0 and 63 in the final phase.
    @Test func phasesAreTheSweepsThatReportTheWrites() throws {
        let base: UInt64 = 0x1000_0000_0000
        let program = WatchedProgram([Self.fixture("fx_phases")], regions: [.addresses(base..<base + 64 * pageSize)])
        var sweepsSeen = 0
        var orderKept = true
        let result = try program.run { event in
            // Each write is delivered before the sweep that reports it, after the one before.
            switch event {
            case .write(let w): if w.phase != sweepsSeen + 1 { orderKept = false }
            case .sweep: sweepsSeen += 1
            default: break
            }
        }
        let plain = try Self.untracked([Self.fixture("fx_phases")])
        #expect(result.output == plain.output)
        #expect(result.end == .exited(code: 0))
        #expect(result.end.shellStatus == plain.status)
        #expect(orderKept)
        guard case .start(let pid) = result.events.first, case .end(.exited(0)) = result.events.last else {
            Issue.record(
                "events must open with start and close with end: \(result.events.first!), \(result.events.last!)")
            return
        }
        #expect(pid == result.pid)

        let truth = Self.truth(result.output ?? "")
        #expect(truth.count == 5)
        #expect(result.sweeps.map(\.seq) == [1, 2, 3, 4, 5])
        #expect(result.sweeps.map(\.reason) == [.signal, .signal, .signal, .signal, .exit])
        for phase in 1...5 {
            let sweep = try #require(result.sweep(phase))
            #expect(Self.indexes(sweep.reportedPages, base: base) == truth[phase], "sweep \(phase)")
            // What was written holds data; the rest of a new region reads as zeros.
            let written = result.writes.filter { $0.phase == phase }
            #expect(Set(written.map(\.page)).isSubset(of: sweep.pages), "sweep \(phase)")
            #expect(sweep.fileRanges.isEmpty)
            // Phase 1 maps the region (reported whole, "unseen") and stores to page 0 only.
            #expect(
                Self.indexes(written.map(\.page), base: base) == (phase == 1 ? [0] : truth[phase]), "phase \(phase)")
            #expect(written.count == Set(written.map(\.page)).count, "one event per page and phase")
            #expect(written.allSatisfy { $0.tid == result.pid && $0.pid == result.pid && $0.kernelCall == nil })
            #expect(written.allSatisfy { $0.writer == "main" && $0.frames.first?.module == Self.fixture("fx_phases") })
            #expect(result.pages(writtenBy: "main", inPhase: phase) == written.map(\.page).sorted())
            // The stores faulted once a page.
            #expect(sweep.faults == written.count)
        }
    }

    // MARK: - Who wrote

    /// fx_writers: `fill_two` writes 1-2, `poke_five` 5, the kernel 6 for
    /// `read()`, libc's memset 7 (phase 2); a 30-deep `descend` 3 (phase 3).
    /// Its `site` lines name the line of each store.
    @Test func functionsWroteTheirPagesInTheirPhase() throws {
        let base: UInt64 = 0x2700_0000_0000
        let page = { (i: UInt64) in base + i * pageSize }
        let result = try WatchedProgram([Self.fixture("fx_writers")], regions: [.addresses(base..<page(8))]).run()
        let plain = try Self.untracked([Self.fixture("fx_writers")])
        #expect(result.output == plain.output)
        #expect(result.end.shellStatus == plain.status)
        #expect(result.end == .exited(code: 0))

        #expect(result.pages(writtenBy: "fill_two", inPhase: 2) == [page(1), page(2)])
        #expect(result.pages(writtenBy: "poke_five", inPhase: 2) == [page(5)])
        #expect(result.pages(writtenBy: "[kernel] read", inPhase: 2) == [page(6)])
        #expect(result.pages(writtenBy: "descend", inPhase: 3) == [page(3)])
        #expect(result.pages(writtenBy: "fill_two", inPhase: 3) == [])
        // Through the stack: main made every phase-2 write (libc's memset and
        // the kernel's read included); descend's innermost frame is one of 30.
        #expect(result.pages(writtenThrough: "main", inPhase: 2) == [1, 2, 5, 6, 7].map(page))
        #expect(result.pages(writtenBy: "main", inPhase: 2) == [])
        #expect(result.pages(writtenThrough: "descend", inPhase: 3) == [page(3)])
        #expect(result.pages(writtenThrough: "fill_two", inPhase: 2) == [page(1), page(2)])
        // Phase 1: main mapped the region and wrote every page of it.
        #expect(result.writers(inPhase: 1) == Dictionary(uniqueKeysWithValues: (0..<8).map { (page($0), "main") }))
        #expect(Set(result.writers(inPhase: 2).keys) == Set([1, 2, 5, 6, 7].map(page)))
        #expect(result.writers(inPhase: 3) == [page(3): "descend"])
        #expect(result.writers(inPhase: 4).isEmpty)
        #expect(result.writes.allSatisfy { $0.tid == result.pid })

        // File and line of each store, as the fixture prints them: "site PHASE FUNCTION CALLER PAGE LINE".
        let sites = (result.output ?? "").split(separator: "\n").filter { $0.hasPrefix("site ") }.map {
            $0.split(separator: " ")
        }
        #expect(sites.count == 6)
        for site in sites {
            let phase = Int(site[1])!, function = String(site[2]), line = Int(site[5])!
            let write = try #require(result.writes.first { $0.phase == phase && $0.page == page(UInt64(site[4])!) })
            // The frame in fx_writers.c: the store itself, or the call into the kernel or libc.
            let own: Frame
            switch function {
            case "[kernel]read":
                #expect(write.kernelCall == "read")
                #expect(["read", "__libc_read", "__read"].contains(write.frames.first?.function ?? ""))
                own = write.frames[1]
                #expect(own.function == "main")
            case "libc":
                #expect(write.kernelCall == nil)
                #expect(write.frames.first?.module?.hasSuffix("libc.so.6") == true)
                own = write.frames[1]
                #expect(own.function == "main")
            default:
                #expect(write.kernelCall == nil)
                own = write.frames[0]
                #expect(own.function == function)
            }
            #expect(own.file?.hasSuffix("fixtures/fx_writers.c") == true, "\(site)")
            #expect(own.line == line, "\(site)")
            #expect(own.module == Self.fixture("fx_writers"))
        }
        // The recursion: 16 frames (the default depth), every one `descend`.
        let deep = try #require(result.writes.first { $0.page == page(3) && $0.phase == 3 })
        #expect(deep.frames.count == 16)
        #expect(deep.frames.allSatisfy { $0.function == "descend" })
    }

    @Test func stackDepthBoundsTheFramesAndZeroDropsThem() throws {
        let base: UInt64 = 0x2700_0000_0000
        let deep = try WatchedProgram(
            [Self.fixture("fx_writers")], regions: [.addresses(base..<base + 8 * pageSize)],
            stackDepth: 4
        ).run()
        let recursion = try #require(deep.writes.first { $0.phase == 3 })
        #expect(recursion.frames.map(\.function) == Array(repeating: "descend", count: 4))

        let none = try WatchedProgram(
            [Self.fixture("fx_writers")], regions: [.addresses(base..<base + 8 * pageSize)],
            stackDepth: 0
        ).run()
        // Pages and phases without attribution: the same events, no frames.
        #expect(none.writes.map { [$0.page, UInt64($0.phase)] } == deep.writes.map { [$0.page, UInt64($0.phase)] })
        #expect(none.writes.allSatisfy { $0.frames.isEmpty })
        #expect(none.pages(writtenBy: "[kernel] read", inPhase: 2) == [base + 6 * pageSize])
        #expect(none.pages(writtenBy: "[unknown]", inPhase: 2) == [1, 2, 5, 7].map { base + $0 * pageSize })
    }

    /// fx_syscall_out: the kernel copies results into armed pages; each
    /// write event names the call, with the program's stack at it.
    @Test func kernelWritesNameTheirSystemCall() throws {
        let base: UInt64 = 0x1600_0000_0000
        let result = try WatchedProgram(
            [Self.fixture("fx_syscall_out")], regions: [.addresses(base..<base + 16 * pageSize)]
        ).run()
        let plain = try Self.untracked([Self.fixture("fx_syscall_out")])
        #expect(result.output == plain.output)
        #expect(result.end.shellStatus == plain.status)
        #expect(result.end == .exited(code: 0))
        let truth = Self.truth(result.output ?? "")

        func calls(_ phase: Int) -> [UInt64: String] {
            Dictionary(
                uniqueKeysWithValues: result.writers(inPhase: phase).map { (($0.key - base) / pageSize, $0.value) })
        }
        let phase2 = calls(2)
        #expect(Set(phase2.keys) == truth[2])
        #expect(phase2[2] == "[kernel] read" && phase2[3] == "[kernel] read")  // one read() straddling two pages
        #expect(["[kernel] fstat", "[kernel] newfstatat"].contains(phase2[5] ?? ""))
        #expect(phase2[7] == "[kernel] getrandom")
        #expect(phase2[9] == "[kernel] pipe2")
        #expect(["[kernel] nanosleep", "[kernel] clock_nanosleep"].contains(phase2[11] ?? ""))
        #expect(phase2[12] == "[kernel] uname")
        #expect(calls(3) == [2: "[kernel] read", 13: "[kernel] readv", 15: "[kernel] readv"])
        #expect(Set(calls(3).keys) == truth[3])
        // The kernel's writes take no fault, and carry the stack at the call: main called them.
        for w in result.writes where w.phase > 1 {
            #expect(w.kernelCall != nil && w.tid == result.pid)
            #expect(w.frames.contains { $0.function == "main" }, "\(w.writer)")
        }
        #expect(result.sweep(2)?.faults == 0)
        #expect(result.sweep(3)?.faults == 0)
    }

    /// fx_threads, phase 2: thread i writes pages 4i..4i+7, so pages 0-3 are
    /// only the first worker's and 16-19 only the last one's.
    @Test func threadIdsAreTheWritingThreads() throws {
        let base: UInt64 = 0x1100_0000_0000
        let program = WatchedProgram([Self.fixture("fx_threads")], regions: [.addresses(base..<base + 32 * pageSize)])
        var livingWriters = 0, writes = 0
        let result = try program.run { event in
            // The writer is stopped at its write: its thread is there to see.
            guard case .write(let w) = event else { return }
            writes += 1
            if access("/proc/\(w.pid)/task/\(w.tid)", F_OK) == 0 { livingWriters += 1 }
        }
        #expect(result.end == .exited(code: 0))
        #expect(writes > 0 && livingWriters == writes)
        let phase2 = Dictionary(
            uniqueKeysWithValues: result.writes.filter { $0.phase == 2 }.map { (($0.page - base) / pageSize, $0) })
        #expect(Set(phase2.keys) == Set(0...19))
        #expect(phase2.values.allSatisfy { $0.writer == "overlap_worker" && $0.tid != result.pid })
        let first = Set((0...3).compactMap { phase2[$0]?.tid }), last = Set((16...19).compactMap { phase2[$0]?.tid })
        #expect(first.count == 1 && last.count == 1 && first != last)
        #expect(Set(result.writes.filter { $0.phase == 3 }.map(\.page)) == [base + 3 * pageSize, base + 17 * pageSize])
        #expect(
            result.writes.filter { $0.phase == 3 }.allSatisfy { $0.writer == "shared_worker" && $0.tid != result.pid })
    }

    // MARK: - The program's end and the process around the session

    @Test func exitStatusIsTheProgramsOwn() throws {
        let result = try WatchedProgram([Self.fixture("fx_exit3")]).run()
        let plain = try Self.untracked([Self.fixture("fx_exit3")])
        #expect(plain.status == 3)
        #expect(result.end == .exited(code: 3))
        #expect(result.end.shellStatus == plain.status)
        #expect(result.output == plain.output)
        #expect(result.events.last == .end(.exited(code: 3)))
        #expect(result.sweeps.last?.reason == .exit)
    }

    @Test func refusesWhatItCannotRun() throws {
        #expect(throws: WatchError.noProgram) { try WatchedProgram([]).run() }
        #expect(throws: WatchError.stackDepthOutOfRange(257)) {
            try WatchedProgram(["/bin/true"], stackDepth: 257).run()
        }
        #expect(throws: WatchError.unusableSweepSignal(SIGKILL)) {
            try WatchedProgram(["/bin/true"], sweepSignal: SIGKILL).run()
        }
        #expect(throws: WatchError.emptyRegion(.addresses(0x1000..<0x1000))) {
            try WatchedProgram(["/bin/true"], regions: [.addresses(0x1000..<0x1000)]).run()
        }
        do {
            _ = try WatchedProgram(["/nonexistent/program"]).run()
            Issue.record("a missing program ran")
        } catch TraceError.execFailed(let path, _) {
            #expect(path == "/nonexistent/program")
        }
    }

    /// Tracing ignores SIGINT and SIGQUIT in this process while the program runs; the runner gets them back.
    @Test func theRunnersSignalDispositionsComeBack() throws {
        func handler(_ sig: Int32) -> UInt {
            var action = sigaction()
            sigaction(sig, nil, &action)
            return withUnsafeBytes(of: &action) { $0.load(as: UInt.self) }  // sa_handler comes first
        }
        let before = (handler(SIGINT), handler(SIGQUIT))
        #expect(before.0 != UInt(bitPattern: 1))  // not SIG_IGN already, or the test proves nothing
        _ = try WatchedProgram([Self.fixture("fx_exit3")]).run()
        #expect(handler(SIGINT) == before.0)
        #expect(handler(SIGQUIT) == before.1)
    }

    /// A session reaps only its own tracees: a child another thread started
    /// meanwhile is still there for that thread to wait for.
    @Test func anotherThreadsChildIsLeftToIt() throws {
        final class Shared: Sendable {
            let spawned = DispatchSemaphore(value: 0), sessionDone = DispatchSemaphore(value: 0)
            let waited = DispatchSemaphore(value: 0)
            let outcome = Mutex<(pid: pid_t, status: Int32)?>(nil)
        }
        let shared = Shared()
        let exit3 = Self.fixture("fx_exit3")
        let thread = Thread {
            var pid: pid_t = 0
            let argv = Self.cStrings([exit3])
            defer { argv.forEach { free($0) } }
            var quiet = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&quiet)
            defer { posix_spawn_file_actions_destroy(&quiet) }
            posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0)
            let spawned = posix_spawn(&pid, exit3, &quiet, nil, argv, argv.suffix(1)) == 0  // no environment
            shared.spawned.signal()
            // This thread stays alive until the session is over: its child is not handed to another thread.
            shared.sessionDone.wait()
            var status: Int32 = 0
            var r: pid_t = -1
            repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
            if spawned { shared.outcome.withLock { $0 = (r, status) } }
            shared.waited.signal()
        }
        thread.start()
        shared.spawned.wait()
        // fx_sleeper sleeps 400 ms: the other child has long exited while the session waits.
        let result = try WatchedProgram([Self.fixture("fx_sleeper")]).run()
        shared.sessionDone.signal()
        shared.waited.wait()
        #expect(result.end == .exited(code: 0))
        #expect(result.output == "ready\nslept full\n")
        let outcome = try #require(shared.outcome.withLock { $0 })
        #expect(outcome.pid > 0)
        #expect(outcome.status & 0x7f == 0 && (outcome.status >> 8) & 0xff == 3)
    }
}
