import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// Signals delivered to the program: the sweep signal, and the
/// frames the kernel writes for handlers, kept writable.
extension ProcessTracker {
    func handleSignal(_ sig: Int32, _ thread: TrackedThread) throws {
        let tid = thread.tid
        if sig == Signal.SIGSEGV {
            let info = stopSignalInfo?.tid == tid ? stopSignalInfo!.info : try Ptrace.signalInfo(tid)
            stopSignalInfo = nil
            trace("  SIGSEGV code \(info.code) at \(info.faultAddress)")
            if try handleSegv(info, thread) { return }
            if try deferOwnFaultWhileActionReset(info, thread) { return }
        }
        if sig == config.sweepSignal {
            if !finalSweepDone && !givesUpAtSweep { pendingSweep = .signal }
            // A thread an attach has not yet seen stop cannot wait here: the
            // attach sweep waits for its first stop, the interrupt's, which
            // comes only once it runs on. Resumed without the signal, it takes
            // that stop before running any code of its own (the kernel serves
            // a pending interrupt first) and waits there.
            if thread.preexisting && thread.interrupt.pending {
                thread.sweepSignalTaken = true
                try resume(thread)  // swallowed
                return
            }
            try waitForSignalSweep(thread)
            return
        }
        // A handler on an alternate stack the thread set before an attach:
        // where is it? (Asked with the signal held, below.)
        let unknownStack = !thread.signals.altStackKnown && signalActions.onStack & (UInt64(1) << UInt64(sig - 1)) != 0
        let area = unknownStack ? nil : try signalFrameArea(sig, thread)
        let frame = armedPages(ofFrame: area)
        if pendingSweep != nil || !frame.isEmpty || unknownStack {
            // Keep the program's signal with its siginfo across our injections.
            let own = try Ptrace.holdSignal(tid)
            try learnRseq(thread)
            if unknownStack { try learnAltStack(thread) }
            // The sweep first: it re-arms pages, and the frame's must stay
            // writable (so after a sweep the frame's armed pages are found again).
            let swept = pendingSweep != nil
            try sweepIfPending(in: thread)
            let frameNow = swept || unknownStack ? armedPages(ofFrame: try signalFrameArea(sig, thread)) : frame
            let framer = attribution.writer("signal frame " + Signal.name(sig), tid: tid)
            for range in frameNow.ranges { try unarmRange(range, by: framer, thread) }
            thread.signals.held.insert(own, at: 0)
            try resume(thread)
            return
        }
        keepWritable(frame: area, thread)
        try session.proceed(tid, signal: sig)
    }

    /// At the sweep signal (swallowed): the thread goes on once the sweep is
    /// done, which marks a phase: its next writes belong to the next interval.
    func waitForSignalSweep(_ thread: TrackedThread) throws {
        try learnRseq(thread)
        try sweepIfPending(in: thread)
        if pendingSweep != nil {
            thread.waiting = .sweepSignal  // it must wait (sweepIfPending)
            return
        }
        try resume(thread)
    }

    /// To run a handler the kernel writes the signal frame below
    /// the stack pointer (past the red zone), or at the top of the thread's
    /// sigaltstack for an SA_ONSTACK handler; on an armed page that write
    /// fails and the kernel kills the program. Returns the pages the frame
    /// may cover when `sig` has a handler, even while nothing is tracked yet:
    /// the frame is written when the thread next runs, and a sweep in another
    /// thread (an attach's first, which arms everything) may come first.
    func signalFrameArea(_ sig: Int32, _ thread: TrackedThread) throws -> AddressRange? {
        let tid = thread.tid
        guard try caughtSignals() & (1 << UInt64(sig - 1)) != 0 else { return nil }
        var sp = Arch.stackPointer(try Arch.readRegisters(tid: tid))
        var frameBytes = Arch.redZone + signalFrameSize
        if signalActions.onStack & (1 << UInt64(sig - 1)) != 0, let alt = thread.signals.altStack, !alt.contains(sp) {
            sp = alt.end  // the kernel switches to the top of the sigaltstack
            frameBytes = signalFrameSize
        }
        return AddressRange(start: RemoteAddress(sp.value &- frameBytes), end: sp).pageAligned
    }

    /// The pages of a `signalFrameArea` armed in fact: armed in the model,
    /// or another thread's slot is to un-arm them and has not yet (a Go
    /// thread's SIGURG frame failed on its signal stack, un-armed in the
    /// model by a fault of another thread whose slot had not run).
    func armedPages(ofFrame area: AddressRange?) -> PageSet {
        area.map(pagesArmedInFact) ?? PageSet()
    }

    /// The kernel writes a delivered signal's frame when the thread next
    /// runs, which may be after PageWatch has gone on to a sweep in another
    /// thread: like a call's output buffers, the frame's pages are kept out
    /// of sweeps until the thread stops again (a Go thread got SIGSEGV for
    /// its SIGURG frame when a sweep re-armed its signal stack in between).
    func keepWritable(frame area: AddressRange?, _ thread: TrackedThread) {
        guard let area else { return }
        var pages = thread.syscall.callOutputs ?? PageSet()
        pages.insert(area)
        thread.syscall.callOutputs = pages
    }

    /// The signals with a handler (the kernel's sigcatch).
    func caughtSignals() throws -> UInt64 {
        let tid = liveThread()
        guard let d = signalDispositions(tid: tid) else {
            throw TraceError.call("read /proc/\(pid)/task/\(tid)/stat", .ESRCH, tid: tid)
        }
        return d.caught
    }
}
