import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// What PageWatch must know of the program's signal actions and alternate
/// stacks: where a handler's frame lands (signal frames), and the SIGSEGV
/// action a write fault's forced signal may have reset.
extension ProcessTracker {
    static let segvBit = UInt64(1) << UInt64(Signal.SIGSEGV - 1)

    /// Learns, by injected `rt_sigaction(sig, NULL, &old)` calls in `tid`,
    /// the SIGSEGV action and which caught signals run on the alternate
    /// stack: at a new image and at attach, where PageWatch did not see them
    /// set (afterwards `rt_sigaction` entries keep both up to date).
    func learnSignalActions(_ thread: TrackedThread) throws {
        let caught = (try? caughtSignals()) ?? 0
        signalActions.onStack = 0
        signalActions.resetUnchecked = false
        for sig in Int32(1)...64 where sig == Signal.SIGSEGV || caught & (UInt64(1) << UInt64(sig - 1)) != 0 {
            guard let action = try queryAction(sig, thread) else { continue }
            if sig == Signal.SIGSEGV { signalActions.segv = action }
            noteFlags(of: action, signal: UInt64(sig))
        }
    }

    /// The kernel's `struct kernel_sigaction` for `sig`, raw.
    func queryAction(_ sig: Int32, _ thread: TrackedThread) throws -> [UInt8]? {
        guard let remote = injector.remote, let number = Arch.number(.rt_sigaction) else { return nil }
        let size = Int(Arch.layout.kernelSigaction)
        guard
            let (value, raw) = try injector.run(
                number, [UInt64(sig), 0, remote.argumentArea.value, Self.sigsetSize],
                input: [], outputCount: size, thread)
        else { return nil }
        return value == 0 && raw.count == size ? raw : nil
    }

    /// The kernel's sigset_t, the last argument of rt_sigaction and rt_sigprocmask.
    static let sigsetSize: UInt64 = 8

    /// Remembers which handlers run on the alternate stack (SA_ONSTACK).
    func noteFlags(of action: [UInt8], signal: UInt64) {
        let onStack: UInt64 = 0x0800_0000, bit = UInt64(1) << (signal - 1)
        if littleEndian(action, at: 8) & onStack != 0 {
            signalActions.onStack |= bit
        } else {
            signalActions.onStack &= ~bit
        }
    }

    /// A thread's alternate signal stack from its `stack_t`; nil when disabled.
    static func alternateStack(_ raw: [UInt8]) -> AddressRange? {
        let sp = littleEndian(raw, at: 0), flags = littleEndian(raw, at: 8) & 0xffff_ffff,
            size = littleEndian(raw, at: 16)
        let disable: UInt64 = 2
        return flags & disable != 0 || size == 0
            ? nil : AddressRange(start: RemoteAddress(sp), end: RemoteAddress(sp) + size)
    }

    /// Learns a thread's alternate signal stack by an injected
    /// `sigaltstack(NULL, &old)`: for threads that set it before an attach
    /// (a Go program gives every thread one and preempts with SIGURG).
    func learnAltStack(_ thread: TrackedThread) throws {
        guard let remote = injector.remote, let number = Arch.number(.sigaltstack) else { return }
        let size = Int(Arch.layout.stackT)
        guard
            let (value, raw) = try injector.run(
                number, [0, remote.argumentArea.value], input: [], outputCount: size,
                thread)
        else { return }
        guard value == 0, raw.count == size else { return }
        thread.signals.altStackKnown = true
        thread.signals.altStack = Self.alternateStack(raw)
    }

    /// The process's ignored and caught signals, from a thread's stat file
    /// held open across calls (`signalActions.dispositionProbe`). Threads share their
    /// actions, but a vfork child has its own: it is read from its own file.
    func signalDispositions(tid: Int32) -> (ignored: UInt64, caught: UInt64)? {
        let shared = threads[tid]?.vforkChild != true
        if shared, let probe = signalActions.dispositionProbe {
            if let d = ProcFS.signalDispositions(statFD: probe.fd) { return d }
            close(probe.fd)  // its thread is gone
            signalActions.dispositionProbe = nil
        }
        let fd = open("/proc/\(pid)/task/\(tid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        let d = ProcFS.signalDispositions(statFD: fd)
        if shared, d != nil { signalActions.dispositionProbe = (tid, fd) } else { close(fd) }
        return d
    }

    /// A write fault's forced SIGSEGV in a thread that blocks SIGSEGV
    /// (inside a handler without SA_NODEFER, or by its mask), or while
    /// SIGSEGV is ignored, unblocked it and reset its action to SIG_DFL
    /// before the stop (`force_sig_info_to_task`). Called for every write
    /// fault PageWatch absorbs. The action matters only where something
    /// reads it (`restoreSegvActionIfUnchecked`): the check is left to
    /// those places, which spares a `/proc` read at most faults of a
    /// program with a handler (a JVM, node, Go). The mask is the thread's
    /// at its fault: where the heuristic of `restoreSegvActionIfReset` may
    /// block SIGSEGV again (the only thread, or one blocking most signals),
    /// the action is checked at once. A vfork child has its own actions,
    /// checked at once too.
    func noteAbsorbedWriteFault(_ thread: TrackedThread) throws {
        guard let action = signalActions.segv else { return }
        let handler = littleEndian(action, at: 0)
        guard handler != 0 else { return }  // SIG_DFL: a reset leaves it as it is
        if thread.vforkChild { return try restoreSegvActionIfReset(thread) }
        if handler != 1 {  // a handler, not SIG_IGN: the mask may be put back
            if threads.count == 1 { return try restoreSegvActionIfReset(thread) }
            let mask = try Ptrace.signalMask(thread.tid)
            if mask.nonzeroBitCount >= 32 { return try restoreSegvActionIfReset(thread, mask: mask) }
        }
        signalActions.resetUnchecked = true
    }

    /// Puts the action back where a write fault reset it and, where the
    /// program had a handler (so the reset means a thread blocked SIGSEGV),
    /// blocks it again where that thread is most likely this one. With
    /// SIG_DFL nothing shows whether it was blocked: the mask stays as the
    /// kernel left it (docs/design.md, limits). `mask`: the thread's, if
    /// already read.
    func restoreSegvActionIfReset(_ thread: TrackedThread, mask known: UInt64? = nil) throws {
        let tid = thread.tid
        guard let action = signalActions.segv else { return }
        let handler = littleEndian(action, at: 0)
        let ignoring = handler == 1  // SIG_IGN; 0 is SIG_DFL, which a reset leaves as it is
        guard segvActionReset(tid: tid) else { return }
        trace("  SIGSEGV action reset by the kernel's forced signal in \(tid): put back")
        guard try putBackSegvAction(thread), !ignoring else { return }
        // The reset means the faulting thread blocked SIGSEGV; but the action
        // is shared, and in a threaded program another thread's fault, not yet
        // seen, may have reset it: blocking SIGSEGV in this one then would make
        // its next fault reset the action again and its program's own next
        // SIGSEGV kill it (node: a thread starting with every signal blocked).
        // So the mask is put back only where this thread most likely faulted with
        // SIGSEGV blocked: the only thread, or one that blocks most signals
        // (pthread_create's window, a JVM's handler). After the injection,
        // which restores the mask it found.
        let mask = try known ?? Ptrace.signalMask(tid)
        if threads.count == 1 || mask.nonzeroBitCount >= 32 { try Ptrace.setSignalMask(tid, mask | Self.segvBit) }
    }

    /// Where the action is read (the program's own SIGSEGV about to be
    /// delivered, its `rt_sigaction(SIGSEGV)`, a fork, clone or vfork that
    /// copies the actions, an exec that keeps SIG_IGN, a sweep, the end of
    /// tracking): puts it back if a write fault whose check was left for
    /// later (`noteAbsorbedWriteFault`) reset it. The mask stays: that
    /// fault's thread was not one whose mask is put back. Returns true when
    /// it ran code in `thread` (at a syscall entry: the call is rewound).
    @discardableResult
    func restoreSegvActionIfUnchecked(_ thread: TrackedThread) throws -> Bool {
        guard signalActions.resetUnchecked, !thread.vforkChild, !segvActionChangeInFlight(besides: thread.tid)
        else { return false }
        signalActions.resetUnchecked = false
        guard segvActionReset(tid: thread.tid) else { return false }
        trace("  SIGSEGV action reset by an earlier write fault, seen at \(thread.tid): put back")
        return try putBackSegvAction(thread)
    }

    /// Whether another thread is inside the program's own
    /// `rt_sigaction(SIGSEGV, act)`: until its exit the action may be the
    /// new one, which a check against PageWatch's copy would undo.
    func segvActionChangeInFlight(besides tid: Int32) -> Bool {
        threads.contains { other, state in
            guard other != tid, case .segvAction? = state.syscall.pendingExit else { return false }
            return true
        }
    }

    /// Sets the SIGSEGV action to PageWatch's copy by an injected
    /// `rt_sigaction`. False when no code can be run in the program.
    @discardableResult
    func putBackSegvAction(_ thread: TrackedThread) throws -> Bool {
        guard let action = signalActions.segv, let remote = injector.remote,
            let number = Arch.number(.rt_sigaction),
            let (value, _) = try injector.run(
                number, [UInt64(Signal.SIGSEGV), remote.argumentArea.value, 0, Self.sigsetSize],
                input: action, outputCount: 0, thread)
        else { return false }
        if value < 0 {
            throw TraceError.remoteSyscall(
                "rt_sigaction(SIGSEGV)", Errno(Int32(-value)), tid: thread.tid, address: nil)
        }
        return true
    }
}

extension ProcessTracker {
    /// The program's SIGSEGV action (a handler, or SIG_IGN) is SIG_DFL now:
    /// reset by a write fault's forced signal (`restoreSegvActionIfReset`).
    func segvActionReset(tid: Int32) -> Bool {
        guard let action = signalActions.segv else { return false }
        let handler = littleEndian(action, at: 0)
        guard handler != 0, let now = signalDispositions(tid: tid) else { return false }
        return (handler == 1 ? now.ignored : now.caught) & Self.segvBit == 0
    }

    /// How long a thread's own fault waits for the action to be put back.
    static let ownFaultDeferralNs: UInt64 = 20_000_000

    /// A fault of the program's own (raised by its instruction) about to be
    /// delivered while its SIGSEGV action is reset: another thread's write
    /// fault, not yet seen here, reset it (a handler without SA_NODEFER
    /// writing a page an attach or a sweep just armed), and delivered now it
    /// would kill the program. The thread goes on without it, so that its
    /// instruction faults again once that stop has put the action back. Past
    /// `ownFaultDeferralNs` it is delivered: the reset was its own (a fault
    /// inside its handler), which kills the program without PageWatch too.
    func deferOwnFaultWhileActionReset(_ info: SignalInfo, _ thread: TrackedThread) throws -> Bool {
        let unchecked =
            signalActions.resetUnchecked && !thread.vforkChild && !segvActionChangeInFlight(besides: thread.tid)
        if unchecked { signalActions.resetUnchecked = false }
        guard unchecked || info.isRaisedByItsInstruction, segvActionReset(tid: thread.tid) else {
            thread.ownFaultDeferredSinceNs = nil
            return false
        }
        if unchecked {
            // An absorbed fault's check was left for this delivery: the
            // action is put back first. A fault goes on without its signal
            // (its instruction raises it again); a sent one is held meanwhile.
            trace("  SIGSEGV action reset by an earlier write fault, seen at \(thread.tid): put back")
            let sent = info.isRaisedByItsInstruction ? nil : try Ptrace.holdSignal(thread.tid)
            try putBackSegvAction(thread)
            thread.ownFaultDeferredSinceNs = nil
            if let sent { thread.signals.held.insert(sent, at: 0) }
            try resume(thread)
            return true
        }
        let now = monotonicNs()
        let since = thread.ownFaultDeferredSinceNs ?? now
        guard now &- since < Self.ownFaultDeferralNs else {
            thread.ownFaultDeferredSinceNs = nil
            return false
        }
        if thread.ownFaultDeferredSinceNs == nil {
            trace("  own SIGSEGV of \(thread.tid) while the action is reset: again later")
        }
        thread.ownFaultDeferredSinceNs = since
        try resume(thread)  // without the signal
        return true
    }
}

extension ProcessTracker {
    /// Held faults of the program's own, while its SIGSEGV action is reset
    /// (`deferOwnFaultWhileActionReset`): dropped, their instructions raise
    /// them again when the thread runs on.
    func leaveOwnFaultsToTheirInstructionWhileActionReset(_ thread: TrackedThread) throws {
        if thread.signals.held.contains(where: { $0.signal == Signal.SIGSEGV }) {
            try restoreSegvActionIfUnchecked(thread)  // about to be delivered
        }
        let own = { (h: HeldSignal) in h.signal == Signal.SIGSEGV && h.isRaisedByItsInstruction }
        guard thread.signals.held.contains(where: own), segvActionReset(tid: thread.tid) else { return }
        trace("  held own SIGSEGV of \(thread.tid) while the action is reset: left to its instruction")
        thread.signals.held.removeAll(where: own)
    }
}

/// The program's signal actions as PageWatch needs them (`ProcessTracker.signalActions`).
struct KnownSignalActions {
    /// Signals whose handler runs on the sigaltstack (SA_ONSTACK).
    var onStack: UInt64 = 0
    /// The program's SIGSEGV action as the kernel holds it (the raw
    /// `struct kernel_sigaction`), to put back where a write fault's forced
    /// signal reset it (`restoreSegvActionIfReset`); nil until learned.
    var segv: [UInt8]?
    /// A thread's `/proc/PID/task/TID/stat`, held open (`signalDispositions`).
    var dispositionProbe: (tid: Int32, fd: Int32)?
    /// A write fault was absorbed since the action was last checked: it may
    /// have reset the action (`noteAbsorbedWriteFault`).
    var resetUnchecked = false
}
