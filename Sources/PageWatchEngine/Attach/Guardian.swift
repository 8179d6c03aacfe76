import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// In attach mode, PageWatch killed (SIGKILL, a crash) leaves the
/// program with armed pages, and it would die at its next write to one. The
/// guardian is a small process `pagewatch attach` starts before seizing
/// (`pagewatch guardian`, in its own session). It blocks reading a pipe only
/// PageWatch can write: a `D` means PageWatch detached cleanly; end of file
/// means PageWatch is gone. The kernel closes a dying process's files before
/// it releases its tracees, so the guardian wakes first: it stops the
/// program (SIGSTOP), waits until the kernel has let go of it, seizes every
/// thread, gives the regions PageWatch published (`GuardianState`) the
/// program's protection back, unmaps the gadget page, detaches and sends
/// SIGCONT.
public enum Guardian {
    /// The guardian process's work; returns its exit status.
    public static func watch(stateFD: Int32 = 3, watchFD: Int32 = 4) -> Int32 {
        guard let state = try? GuardianState(fd: stateFD) else { return 1 }
        // Wake first when PageWatch dies: the program runs free from the
        // moment the kernel releases it (where permitted; otherwise as is).
        var param = sched_param(sched_priority: 1)
        _ = sched_setscheduler(0, SCHED_FIFO, &param)
        var byte: UInt8 = 0
        var n = 0
        repeat { n = read(watchFD, &byte, 1) } while n < 0 && errno == EINTR
        if n == 1 && byte == UInt8(ascii: "D") { return 0 }
        guard let snapshot = state.snapshot(), snapshot.pid > 0 else { return 1 }
        let pid = snapshot.pid
        _ = kill(pid, SIGSTOP)
        // The race is won or lost: back to normal scheduling before any loop.
        var normal = sched_param(sched_priority: 0)
        _ = sched_setscheduler(0, SCHED_OTHER, &normal)
        // The kernel lets go of the threads one by one: seizing one still
        // held fails with EPERM.
        for _ in 0..<5000 where Attacher.threads(of: pid).contains(where: { tracer(of: $0) != 0 }) { usleep(1000) }
        let final = state.snapshot() ?? snapshot
        let inside = state.injection(registerWords: HostArchitecture.registerWordCount)
        do {
            try rescue(pid, gadget: final.gadget, regions: final.regions, injection: inside)
        } catch {
            report("pagewatch guardian: could not restore pid \(pid): \(error)")
            _ = kill(pid, SIGCONT)
            return 1
        }
        _ = kill(pid, SIGCONT)
        report("pagewatch guardian: PageWatch died; pid \(pid) restored and released")
        return 0
    }

    static func report(_ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    static func tracer(of pid: Int32) -> Int32 {
        ProcFS.statusField("TracerPid", of: pid).flatMap { Int32($0) } ?? 0
    }

    static func rescue(
        _ pid: Int32, gadget: RemoteAddress?, regions: [(AddressRange, Protection)],
        injection: (tid: Int32, saved: [UInt64])? = nil
    ) throws {
        let tids = try Attacher.seizeAll(pid, options: [])
        for tid in tids { _ = try? Ptrace.interrupt(tid) }
        var stopped: [Int32] = []
        var gone = Set<Int32>()
        var signals: [Int32: HeldSignal] = [:]
        let deadline = monotonicNs() + 10_000_000_000
        while stopped.count + gone.count < tids.count {
            guard monotonicNs() < deadline else { throw TraceError.traceeGone(tid: pid) }
            guard let event = try Wait.poll(-1) else { usleep(1000); continue }
            switch event {
            case .groupStop(let tid, _), .interruptStop(let tid):
                if !stopped.contains(tid) { stopped.append(tid) }
            case .signalDelivery(let tid, _):
                signals[tid] = try Ptrace.holdSignal(tid)  // our SIGSTOP, most likely: delivered at the detach
                if !stopped.contains(tid) { stopped.append(tid) }
            case .exited(let tid, _), .killed(let tid, _, _):
                gone.insert(tid)
            default:
                try Ptrace.cont(event.tid)
            }
        }
        // A thread inside a fault trampoline slot: the registers the slot
        // would leave. A thread PageWatch left inside an injected call (it
        // stopped itself at the gadget's end, or is still in it): its saved
        // registers from the journal. (The scratch pages go below.)
        if let gadget {
            let code = AddressRange(start: Page.floor(gadget), end: Page.floor(gadget) + Page.size)
            for tid in stopped {
                guard let regs = try? HostArchitecture.readRegisters(tid: tid) else { continue }
                if (try? RemoteSyscall(gadget: gadget).trampoline.settle(tid: tid, registers: regs)) ?? nil != nil {
                    continue
                }
                if let injection, injection.tid == tid, code.contains(HostArchitecture.instructionPointer(regs)),
                    let saved = HostArchitecture.registers(words: injection.saved)
                {
                    try? HostArchitecture.writeRegisters(saved, tid: tid)
                }
            }
            stopped.removeAll { endHelperThread($0, gadget: gadget) }
        }
        // A write fault pending at a stop is PageWatch's: dropped below.
        var later: [Int32: [HeldSignal]] = [:]
        for tid in stopped where signals[tid] == nil {
            later[tid] = (try? Ptrace.takePendingFault(tid)) ?? []
        }
        if let gadget, let tid = stopped.first {
            let injector = RemoteSyscall(gadget: gadget)
            if let (_, o) = try? injector.mprotectBatch(regions.map { (range: $0.0, protection: $0.1) }, in: tid) {
                later[tid, default: []] += o.heldSignals
            }
            if let held = try? injector.unmapScratch(in: tid) { later[tid, default: []] += held }
        }
        let armed = regions.map(\.0)
        for tid in stopped {
            if let s = signals[tid], !isFault(s, of: tid, in: armed) {
                try? Ptrace.detach(tid, delivering: s)
            } else {
                try? Ptrace.detach(tid)
            }
            // (A fault of the program's own is raised again by its instruction.)
            for h in later[tid] ?? [] where !isFault(h, of: tid, in: armed) && !h.isRaisedByItsInstruction {
                try? Ptrace.tgkill(pid, tid, h.signal)
            }
        }
    }

    /// A thread still in the gadget once the journal's registers are back
    /// is the userfaultfd's helper thread (`ProcessTracker+HelperThread`:
    /// no thread of the program's is there outside an injection), left
    /// between its clone and its `exit`: it runs `exit(0)` now, before the
    /// gadget page goes. True when it was one (and is gone).
    static func endHelperThread(_ tid: Int32, gadget: RemoteAddress) -> Bool {
        typealias Arch = HostArchitecture
        let code = AddressRange(start: gadget, end: gadget + UInt64(Arch.scratchGadget.count))
        guard let regs = try? Arch.readRegisters(tid: tid), code.contains(Arch.instructionPointer(regs)) else {
            return false
        }
        let leaving = Arch.preparingSyscall(regs, number: Arch.number(.exit)!, arguments: [0], gadget: gadget)
        guard (try? Arch.writeRegisters(leaving, tid: tid)) != nil, (try? Ptrace.cont(tid)) != nil else { return false }
        let deadline = monotonicNs() + 1_000_000_000
        while monotonicNs() < deadline {
            let event: StopEvent?
            do { event = try Wait.poll(tid) } catch { return true }  // reaped
            switch event {
            case .exited?, .killed?: return true
            case let event?: try? Ptrace.cont(event.tid)
            case nil: usleep(100)
            }
        }
        return true
    }

    /// A SIGSEGV that PageWatch's armed pages caused: a write fault in them,
    /// or the kernel's forced SIGSEGV for an rseq area in them.
    /// With the pages given back, the program would not have had it.
    static func isFault(_ h: HeldSignal, of tid: Int32, in armed: [AddressRange]) -> Bool {
        guard h.signal == Signal.SIGSEGV else { return false }
        switch h.code {
        case SignalInfo.SEGV_ACCERR:
            return armed.contains { $0.contains(h.faultAddress) }
        case SignalInfo.SI_KERNEL:
            guard let area = try? Ptrace.rseqArea(tid) else { return false }
            return armed.contains { $0.contains(area.address) }
        default:
            return false
        }
    }
}

extension Tracker {
    /// Starts the guardian for `pid` (before seizing it).
    func startGuardian(for pid: Int32) throws {
        let state = try GuardianState(pid: pid)
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw TraceError.call("readlink(/proc/self/exe)", Errno(errno), tid: getpid()) }
        let path = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let (_, watch) = try spawnGuardian(path: path, arguments: ["guardian"], stateFD: state.fd)
        attachState?.guardian = (state, watch)
    }

    /// PageWatch is done with the process (detached, or it ended): the guardian can go.
    func releaseGuardian() {
        guard let (_, watch) = attachState?.guardian else { return }
        var d = UInt8(ascii: "D")
        _ = write(watch, &d, 1)
        close(watch)
        attachState?.guardian = nil
    }
}

extension ProcessTracker {
    /// Tells the guardian what to restore should PageWatch die now: the
    /// regions and the program's protection there, and the gadget. Called
    /// whenever the model's regions change (`refreshMaps`, before any
    /// arming), before `armNow` and the program's rewritten `mprotect`, for
    /// the attached process.
    /// Where injections publish the registers they replace, for the
    /// guardian (the attached process only).
    var guardianJournal: GuardianState? {
        guard let (state, _) = session.attachState?.guardian, self === session.main else { return nil }
        return state
    }

    /// Every tracked region, armed or not yet, and `extra` (a range about to
    /// be armed that the model does not hold yet): published BEFORE anything
    /// is armed there, so that PageWatch dying between an arming call and
    /// the next publication leaves nothing read-only behind (giving a
    /// region its own protection again is harmless where nothing is armed).
    func publishForGuardian(extra: [(AddressRange, Protection)] = []) {
        guard let (state, _) = session.attachState?.guardian, self === session.main else { return }
        state.publish(
            gadget: injector.remote?.gadget, regions: memory.regions.map { ($0.range, $0.protection) } + extra)
    }
}
