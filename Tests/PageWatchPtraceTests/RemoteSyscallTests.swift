import Glibc
import Testing
import PageWatchAddressSpace
@testable import PageWatchPtrace
@testable import PageWatchEngine  // SharedSlotData, the slots' shared data page

/// Live ptrace: each test launches a fixture stopped at its exec, works on it
/// with the real kernel, and checks what the program itself observed.
@Suite(.serialized) struct RemoteSyscallTests {
    typealias Arch = HostArchitecture

    /// Where SwiftPM put the fixtures: beside the test bundle.
    static func fixture(_ name: String) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, 4095)
        let exe = String(decoding: buffer[0..<max(0, n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var dir = exe
        while !dir.isEmpty && !dir.hasSuffix("/") { dir.removeLast() }
        return dir + name
    }

    static let options: TraceOptions = [.exitKill, .traceSysGood, .traceClone, .traceExec, .traceExit]

    /// Waits for a stop of `tid` that the test expects, resuming anything else.
    func waitForExit(_ pid: Int32) throws -> Int32 {
        while true {
            guard let e = try Wait.next(pid) else { continue }
            switch e {
            case .exited(_, let code): return code
            case .killed(_, let sig, _): return 128 + sig
            case .signalDelivery(_, let sig): try Ptrace.cont(pid, signal: sig)
            case .groupStop: try Ptrace.listen(pid)
            default: try Ptrace.cont(pid)
            }
        }
    }

    /// Resumes `pid` until /proc shows it blocked in one of `syscalls`, then interrupts it.
    func interruptWhenBlocked(_ pid: Int32, in syscalls: Set<Int64>) throws {
        for _ in 0..<2000 {
            if case let .inSyscall(nr, _) = ProcFS.activity(pid: pid, tid: pid), syscalls.contains(nr) {
                try Ptrace.interrupt(pid)
                while true {
                    guard let e = try Wait.next(pid) else { continue }
                    if case .interruptStop = e { return }
                    if case .signalDelivery(_, let sig) = e { try Ptrace.cont(pid, signal: sig); continue }
                    Issue.record("unexpected stop \(e)")
                    return
                }
            }
            usleep(1000)
        }
        Issue.record("pid \(pid) never blocked in \(syscalls)")
    }

    /// A fixture launched stopped at its exec, its stdout on a pipe, the gadget placed.
    func launch(
        _ fixture: String, options: TraceOptions = RemoteSyscallTests.options,
        standardInput: Int32 = -1
    ) throws -> (pid: Int32, injector: RemoteSyscall, output: Int32) {
        var output: [Int32] = [0, 0]
        #expect(pipe(&output) == 0)
        let pid = try Launcher.launch(
            [Self.fixture(fixture)], options: options, standardInput: standardInput,
            standardOutput: output[1], emptySignalMask: true)
        close(output[1])
        return (pid, try RemoteSyscall.bootstrap(in: pid, completing: 0).0, output[0])
    }

    /// Injects getpid `times` times into a stopped `pid` and checks each result.
    func injectGetpid(_ times: Int, into pid: Int32, with injector: RemoteSyscall) throws {
        for _ in 0..<times {
            let r = try injector.call("getpid", Arch.syscalls.getpid, [], in: pid)
            #expect(Int32(r.value) == pid)
        }
    }

    func readAll(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func remoteGetpidReturnsTheTraceesPid() throws {
        let pid = try Launcher.launch([Self.fixture("fx_exit3")], options: Self.options, emptySignalMask: true)
        let injector = try RemoteSyscall.bootstrap(in: pid, completing: 0).0
        let before = try Arch.readRegisters(tid: pid)
        let r = try injector.call("getpid", Arch.syscalls.getpid, [], in: pid)
        #expect(Int32(r.value) == pid)
        let after = try Arch.readRegisters(tid: pid)
        #expect(withUnsafeBytes(of: before) { Array($0) } == withUnsafeBytes(of: after) { Array($0) })
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 3)
    }

    @Test func remoteMprotectShowsInMaps() throws {
        let pid = try Launcher.launch([Self.fixture("fx_exit3")], options: Self.options, emptySignalMask: true)
        let injector = try RemoteSyscall.bootstrap(in: pid, completing: 0).0
        let rw = UInt64(Protection([.read, .write]).rawValue)
        let page = try injector.call(
            "mmap", Arch.syscalls.mmap,
            [0, 2 * Page.size, rw, 0x22, UInt64(bitPattern: -1), 0], in: pid
        ).value
        let range = AddressRange(start: RemoteAddress(page), end: RemoteAddress(page) + Page.size)
        _ = try injector.mprotect(range, [.read], in: pid)
        let maps = try ProcFS.maps(of: pid)
        let hit = maps.first { $0.range.contains(range.start) }
        #expect(hit?.range == range)
        #expect(hit?.protection == [.read])
        // The page beside it keeps its protection.
        #expect(maps.first { $0.range.contains(range.end) }?.protection == [.read, .write])
        // The gadget page itself is read+exec, never writable.
        #expect(maps.first { $0.range.contains(injector.gadget) }?.protection == [.read, .execute])
        // An injected call's own failure comes back as the remote channel.
        #expect(throws: TraceError.self) {
            _ = try injector.mprotect(AddressRange(0x1000, 0x2000), [.read], in: pid)
        }
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 3)
    }

    @Test func blockedReadResumesAndReadsLaterData() throws {
        var input: [Int32] = [0, 0]
        #expect(pipe(&input) == 0)
        let (pid, injector, output) = try launch("fx_blocked_read", standardInput: input[0])
        close(input[0])
        try Ptrace.cont(pid)
        try interruptWhenBlocked(pid, in: [0])  // read
        let regs = try Arch.readRegisters(tid: pid)
        #expect(Arch.syscallNumber(regs) == 0)
        try injectGetpid(3, into: pid, with: injector)
        try Ptrace.cont(pid)
        usleep(50_000)
        _ = "hello".withCString { write(input[1], $0, 5) }
        close(input[1])
        #expect(try waitForExit(pid) == 0)
        #expect(readAll(output) == "ready\nread 5 hello\n")
        close(output)
    }

    @Test func blockedNanosleepSleepsItsFullTime() throws {
        let (pid, injector, output) = try launch("fx_sleeper")
        try Ptrace.cont(pid)
        try interruptWhenBlocked(pid, in: [35, 230])  // nanosleep, clock_nanosleep
        try injectGetpid(1, into: pid, with: injector)
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 0)
        #expect(readAll(output) == "ready\nslept full\n")
        close(output)
    }

    @Test func blockedFutexWaitWaitsForTheThread() throws {
        // Without PTRACE_O_TRACECLONE only the main thread is traced (the launch adds TRACEEXEC).
        let (pid, injector, output) = try launch("fx_futex_wait", options: [.exitKill, .traceSysGood])
        try Ptrace.cont(pid)
        try interruptWhenBlocked(pid, in: [202])  // futex (pthread_join)
        try injectGetpid(3, into: pid, with: injector)
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 0)
        #expect(readAll(output) == "ready\njoined after the thread ended\n")
        close(output)
    }

    @Test func signalSentAroundAnInjectionIsNeitherLostNorDoubled() throws {
        let (pid, injector, output) = try launch("fx_sleeper")
        // A signal queued while the thread is stopped is either held by the
        // injection (dequeued before the gadget ran) or still pending in the
        // kernel (the int3's SIGTRAP is dequeued first, being synchronous).
        try Ptrace.kill(pid, Signal.SIGTERM)
        let outcome = try injector.run(Arch.syscalls.getpid, [], in: pid)
        #expect(Int32(outcome.value) == pid)
        #expect(outcome.heldSignals.allSatisfy { $0.signal == Signal.SIGTERM })
        #expect(outcome.heldSignals.count <= 1)
        if let held = outcome.heldSignals.first {
            try Ptrace.deliver(held, to: pid)
        } else {
            try Ptrace.cont(pid)
        }
        // Either way it reaches the program exactly once: SIGTERM kills it.
        #expect(try waitForExit(pid) == 128 + Signal.SIGTERM)
        close(output)
    }

    /// A SIGSEGV pending at an interrupt stop (a thread that faulted just
    /// before PTRACE_INTERRUPT) is taken, and the thread left in its
    /// signal-delivery-stop: resumed with no signal, it never sees it.
    @Test func pendingSegvAtAnInterruptStopIsTakenAndDiscarded() throws {
        let (pid, _, output) = try launch("fx_sleeper")
        #expect(try Ptrace.takePendingFault(pid).isEmpty)  // nothing pending: left where it is
        try Ptrace.cont(pid)
        try interruptWhenBlocked(pid, in: [35, 230])
        try Ptrace.tgkill(pid, pid, Signal.SIGSEGV)
        let taken = try Ptrace.takePendingFault(pid)
        #expect(taken.map(\.signal) == [Signal.SIGSEGV])
        #expect(try Ptrace.signalInfo(pid).signal == Signal.SIGSEGV)  // in that stop now
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 0)
        #expect(readAll(output) == "ready\nslept full\n")
        close(output)
    }

    /// A sweep's re-arming in one injection: each entry's own result, the
    /// protections in maps, registers as before.
    @Test func batchedMprotectsEachReportTheirResult() throws {
        let pid = try Launcher.launch([Self.fixture("fx_exit3")], options: Self.options, emptySignalMask: true)
        let injector = try RemoteSyscall.bootstrap(in: pid, completing: 0).0
        let rw = UInt64(Protection([.read, .write]).rawValue)
        let base = RemoteAddress(
            try injector.call(
                "mmap", Arch.syscalls.mmap,
                [0, 4 * Page.size, rw, 0x22, UInt64(bitPattern: -1), 0], in: pid
            ).value)
        func page(_ i: UInt64) -> AddressRange {
            AddressRange(start: base + i * Page.size, end: base + (i + 1) * Page.size)
        }
        let before = try Arch.readRegisters(tid: pid)
        var changes: [(range: AddressRange, protection: Protection)] = [
            (page(0), [.read]), (page(2), [.read]), (page(3), []),
        ]
        changes.append((AddressRange(start: base + 1, end: base + 1 + Page.size), [.read]))  // unaligned: EINVAL
        // More than one batch holds: the rest go in a second run.
        changes += Array(repeating: (page(1), Protection([.read, .write])), count: RemoteSyscall.batchCapacity)
        let (results, _) = try injector.mprotectBatch(changes, in: pid)
        #expect(results.count == changes.count)
        #expect(Array(results.prefix(4)) == [0, 0, 0, -Int64(EINVAL)])
        #expect(results.dropFirst(4).allSatisfy { $0 == 0 })
        let after = try Arch.readRegisters(tid: pid)
        #expect(withUnsafeBytes(of: before) { Array($0) } == withUnsafeBytes(of: after) { Array($0) })
        let maps = try ProcFS.maps(of: pid)
        let protections = (0..<4).map { i in maps.first { $0.range.contains(page(UInt64(i)).start) }?.protection }
        #expect(protections == [[.read], [.read, .write], [.read], []])
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 3)
    }

    /// The one-stop fault path's slot: a thread stopped at any
    /// instruction of it (a signal or an interrupt came first) is settled
    /// back to its faulting instruction with every register its own, and
    /// the slot says whether its mprotect ran, as the page's protection
    /// shows. Stepped one instruction at a time through the whole slot.
    /// Both ways of writing the slot's words: process_vm_writev into the
    /// tracee's private page, and stores into the page it shares with
    /// PageWatch (`SharedSlotData`).
    @Test(arguments: [false, true])
    func aThreadStoppedAnywhereInASlotIsPutBackWhole(shared: Bool) throws {
        let pid = try Launcher.launch([Self.fixture("fx_exit3")], options: Self.options, emptySignalMask: true)
        let injector = try RemoteSyscall.bootstrap(in: pid, completing: 0).0
        var held: [HeldSignal] = []
        let sharedData = shared ? try SharedSlotData.share(injector, in: pid, held: &held) : nil
        #expect(held.isEmpty)
        let trampoline = FaultTrampoline(code: injector.trampoline.code, shared: sharedData)
        let rw = Protection([.read, .write])
        let base = RemoteAddress(
            try injector.call(
                "mmap", Arch.syscalls.mmap,
                [0, Page.size, UInt64(rw.rawValue), 0x22, UInt64(bitPattern: -1), 0],
                in: pid
            ).value)
        let page = AddressRange(start: base, end: base + Page.size)
        let original = try Arch.readRegisters(tid: pid)
        // As at a write fault's stop: in no syscall, the six registers the
        // slot uses holding values it must give back.
        // Other values at each pass, so that words the slot saved at an
        // earlier pass cannot pass for this one's.
        func faultRegisters(_ pass: Int) -> user_regs_struct {
            var r = original.raw
            let p = UInt64(pass) << 8
            r.orig_rax = UInt64(bitPattern: -1)
            r.rax = 0x1111_2222_3333_4400 | p; r.rcx = 0x5555_6666_7777_8800 | p; r.r11 = 0x0246 | p << 8
            r.rsi = 0x9999_aaaa_bbbb_cc00 | p; r.rdi = 0xdddd_eeee_ffff_0000 | p; r.rdx = 0x0123_4567_89ab_cd00 | p
            return r
        }
        func protection() throws -> Protection? {
            try ProcFS.maps(of: pid).first { $0.range.contains(base) }?.protection
        }
        let slot = 3
        var steps = 0
        while true {
            _ = try injector.mprotect(page, [.read], in: pid)
            let fault = faultRegisters(steps)
            try Arch.writeRegisters(Arch.Registers(raw: fault), tid: pid)
            try trampoline.enter(slot, tid: pid, mprotect: page, rw)
            for _ in 0..<steps {
                try Ptrace.singleStep(pid)
                guard case .signalDelivery(_, SIGTRAP)? = try Wait.next(pid) else {
                    Issue.record("step did not trap")
                    return
                }
            }
            let regs = try Arch.readRegisters(tid: pid)
            let settled = try trampoline.settle(tid: pid, registers: regs)
            let after = try Arch.readRegisters(tid: pid)
            #expect(
                Arch.words(of: after) == Arch.words(of: Arch.Registers(raw: fault)), "registers after \(steps) steps")
            guard let settled else {
                // Out of the slot: it ran whole and jumped back by itself.
                #expect(try protection() == rw)
                #expect(try trampoline.result(slot, tid: pid) == 0)
                break
            }
            #expect(settled.slot == slot)
            #expect(try protection() == (settled.ran ? rw : [.read]), "after \(steps) steps")
            #expect(try trampoline.result(slot, tid: pid) == (settled.ran ? 0 : 1), "after \(steps) steps")
            steps += 1
        }
        // Eleven instructions to the end of the call, eight more back.
        #expect(steps == 19)
        try Arch.writeRegisters(original, tid: pid)
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 3)
    }

    /// The slots' data page shared with PageWatch: in the tracee a
    /// `MAP_SHARED` memfd at the data page, no descriptor left behind; what
    /// PageWatch stores there the tracee's memory shows, and back.
    @Test func slotDataIsSharedWithPageWatch() throws {
        let pid = try Launcher.launch([Self.fixture("fx_exit3")], options: Self.options, emptySignalMask: true)
        let injector = try RemoteSyscall.bootstrap(in: pid, completing: 0).0
        func descriptors() -> [String] {
            guard let dir = opendir("/proc/\(pid)/fd") else { return ["(unreadable)"] }
            defer { closedir(dir) }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) {
                    String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { names.append(name) }
            }
            return names.sorted()
        }
        let before = descriptors()
        var held: [HeldSignal] = []
        let shared = try SharedSlotData.share(injector, in: pid, held: &held)
        #expect(held.isEmpty)
        #expect(descriptors() == before)
        let data = injector.trampoline.data
        let mapping = try #require(try ProcFS.maps(of: pid).first { $0.range.contains(data) })
        #expect(mapping.range == AddressRange(start: data, end: data + Page.size))
        #expect(mapping.protection == [.read, .write])
        #expect(!mapping.isPrivate)
        #expect(mapping.path.hasPrefix("/memfd:pagewatch-slots"))
        let words = shared.local.assumingMemoryBound(to: UInt64.self)
        words[5] = 0x0123_4567_89ab_cdef
        #expect(try Ptrace.readMemory(pid, data + 40, count: 8) == [0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01])
        try RemoteSyscall.writeWords([42], at: data + 48, tid: pid)
        #expect(words[6] == 42)
        try Ptrace.cont(pid)
        #expect(try waitForExit(pid) == 3)
    }

    /// A thread PageWatch leaves inside an injected call (it
    /// died) runs the call untraced and then stops the process with
    /// SIGSTOP, where a `syscall; int3` gadget would kill it with SIGTRAP;
    /// a new tracer (the guardian) puts the saved registers back (its
    /// journal), and the program runs on as if nothing had happened.
    @Test func aThreadLeftInsideAnInjectionStopsAndIsPutBack() throws {
        let (pid, injector, output) = try launch("fx_sleeper")
        let saved = try Arch.readRegisters(tid: pid)
        let prepared = Arch.preparingSyscall(
            saved, number: Arch.syscalls.getpid, arguments: [], gadget: injector.gadget)
        try Arch.writeRegisters(prepared, tid: pid)
        try Ptrace.detach(pid)  // as when the tracer dies
        var state = ""
        for _ in 0..<2000 where state != "T" {
            usleep(1000)
            let stat = (try? ProcFS.read("/proc/\(pid)/stat", pid: pid)) ?? ""
            state = stat.split(separator: ")").last.map { String($0.dropFirst().prefix(1)) } ?? ""
        }
        #expect(state == "T")  // stopped, not dead
        try Ptrace.seize(pid, options: [])
        var stopped = false
        while !stopped {
            guard let e = try Wait.next(pid) else { continue }
            switch e {
            case .groupStop: stopped = true
            case .exited, .killed: Issue.record("the program ended: \(e)"); return
            default: try Ptrace.cont(pid)
            }
        }
        #expect(injector.gadget.value <= Arch.instructionPointer(try Arch.readRegisters(tid: pid)).value)
        try Arch.writeRegisters(saved, tid: pid)
        try Ptrace.detach(pid)
        kill(pid, SIGCONT)
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid)
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 0)  // exited 0
        #expect(readAll(output) == "ready\nslept full\n")
        close(output)
    }

    @Test func decodesWaitStatuses() {
        #expect(StopEvent.decode(tid: 7, status: 3 << 8) == .exited(tid: 7, status: 3))
        #expect(StopEvent.decode(tid: 7, status: 11 | 0x80) == .killed(tid: 7, signal: 11, coreDumped: true))
        #expect(StopEvent.decode(tid: 7, status: 0x7f | (11 << 8)) == .signalDelivery(tid: 7, signal: 11))
        #expect(StopEvent.decode(tid: 7, status: 0x7f | ((5 | 0x80) << 8)) == .syscallStop(tid: 7))
        #expect(StopEvent.decode(tid: 7, status: 0x7f | (5 << 8) | (3 << 16)) == .event(tid: 7, .clone))
        #expect(StopEvent.decode(tid: 7, status: 0x7f | (19 << 8) | (128 << 16)) == .groupStop(tid: 7, signal: 19))
        #expect(StopEvent.decode(tid: 7, status: 0x7f | (5 << 8) | (128 << 16)) == .interruptStop(tid: 7))
    }

    /// The program's other threads run while PageWatch injects calls into
    /// one of them (attach): placing and removing the scratch pages must not
    /// patch code they run. fx_spinners' other thread spins through the very
    /// instructions the seized one stopped in; a patch there kills it.
    @Test func injectingIntoOneThreadLeavesTheCodeOthersRunAlone() throws {
        var input: [Int32] = [0, 0], output: [Int32] = [0, 0]
        try #require(pipe(&input) == 0 && pipe(&output) == 0)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_adddup2(&actions, output[1], 1)
        var pid: pid_t = 0
        let argv = [strdup(Self.fixture("fx_spinners")), nil]
        defer { free(argv[0]) }
        try #require(posix_spawn(&pid, Self.fixture("fx_spinners"), &actions, nil, argv, environ) == 0)
        close(input[0])
        close(output[1])
        var ready = [UInt8](repeating: 0, count: 6)
        #expect(read(output[0], &ready, 6) == 6 && ready == Array("ready\n".utf8))
        let spinners = Attacher.threads(of: pid).filter { $0 != pid }
        try #require(spinners.count == 2)
        let tid = spinners[0]
        try Ptrace.seize(tid, options: [])
        try Ptrace.interrupt(tid)
        while true {
            guard let e = try Wait.next(tid) else { continue }
            if case .interruptStop = e { break }
            Issue.record("unexpected stop \(e)")
            return
        }
        let text = try Ptrace.readMemory(tid, Arch.instructionPointer(try Arch.readRegisters(tid: tid)), count: 64)
        for _ in 0..<20 {
            let (injector, held) = try RemoteSyscall.bootstrap(in: tid)
            #expect(held.isEmpty)
            #expect(try injector.call("getpid", Arch.syscalls.getpid, [], in: tid).value == UInt64(pid))
            #expect(try injector.unmapScratch(in: tid).isEmpty)
            #expect(!(try ProcFS.maps(of: pid)).contains { $0.range.overlaps(injector.scratch) })
        }
        #expect(
            try Ptrace.readMemory(tid, Arch.instructionPointer(try Arch.readRegisters(tid: tid)), count: 64) == text)
        try Ptrace.detach(tid)
        #expect(write(input[1], "x", 1) == 1)
        close(input[1])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        #expect(status & 0x7f == 0 && (status >> 8) & 0xff == 0, "fx_spinners ended with wait status \(status)")
        #expect(readAll(output[0]) == "ok\n")
        close(output[0])
    }

    @Test func parsesSignalNames() {
        #expect(Signal.parse("USR2") == 12)
        #expect(Signal.parse("SIGUSR1") == 10)
        #expect(Signal.parse("sigterm") == 15)
        #expect(Signal.parse("12") == 12)
        #expect(Signal.parse("RTMIN+2") == 36)
        #expect(Signal.parse("NOPE") == nil)
        #expect(Signal.parse("0") == nil)
        #expect(Signal.name(11) == "SIGSEGV")
    }

    @Test func launchFailureIsExecFailed() {
        #expect {
            _ = try Launcher.launch(["/nonexistent/program"], options: Self.options, emptySignalMask: true)
        } throws: { error in
            guard case TraceError.execFailed(let path, let errno) = error else { return false }
            return path == "/nonexistent/program" && errno == .ENOENT
        }
    }
}
