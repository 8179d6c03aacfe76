import Glibc
import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchPtrace

/// Per-thread bookkeeping of the event loop. A class: the fault path reads
/// and sets a dozen of its fields per fault through `threads[tid]`, and as a
/// struct of some 400 bytes each such access moved it out of the dictionary
/// and back (about 3 us a fault in all, issue 6).
final class ThreadState {
    /// Set when the thread is at its `PTRACE_EVENT_EXIT` stop: it can run no more code.
    var exiting = false
    var inGroupStop = false
    /// A `PTRACE_INTERRUPT` was sent and its stop not yet seen.
    var interruptPending = false
    /// When a sweep's or the detach's interrupt was last sent to it
    /// (monotonic ns; 0: not by them): unanswered for long, it is sent again.
    var interruptSentNs: UInt64 = 0
    /// One was pending at a syscall stop, maybe sent after the thread took
    /// it: the kernel then keeps it, and the next call returns EINTR.
    var interruptMayLinger = false
    /// Its rseq area was looked up and pinned (hazard 3).
    var rseqKnown = false
    /// The page of a fault resumed without unprotecting anything (hazard 11);
    /// a second fault there from this thread is not PageWatch's (hazard 14).
    var lastSuppressedFault: RemoteAddress?
    var suppressedRepeats = 0
    /// Signals that arrived while PageWatch ran code in this thread (hazard 16).
    var held: [HeldSignal] = []
    /// At an event stop inside a syscall (clone, fork, exec): the value that
    /// call returns, which an injection must put back (see `RemoteSyscall.run`).
    var completingSyscall: Int64?
    /// At a syscall-entry (seccomp) stop: the registers there. An injection
    /// abandons the call, so the thread is then rewound to run it again.
    var entryRegisters: HostArchitecture.Registers?
    var injectedAtEntry = false
    /// Sent to the call's exit with PTRACE_SYSCALL, for this.
    var pendingExit: PendingSyscallExit?
    var unknownAttempt = 0
    /// Its sigaltstack (hazard 2, SA_ONSTACK handlers).
    var altStack: AddressRange?
    /// False for a thread that may have set one before an attach, until it
    /// is asked (`learnAltStack`).
    var altStackKnown = true
    /// Its `clear_child_tid` word (`set_tid_address`, or the clone that
    /// created it with CLONE_CHILD_CLEARTID), written by the kernel at its exit (hazard 4).
    var clearChildTid: RemoteAddress?
    /// At a clone's entry: the new thread's CLONE_CHILD_CLEARTID word, for its state at the event.
    var newThreadClearTid: RemoteAddress?
    /// It existed before `pagewatch attach`: its clone was not seen.
    var preexisting = false
    /// A vfork child: another process, but sharing this address space
    /// until it execs or exits (hazard 7).
    var vforkChild = false
    /// Its slot in the fault trampoline, once it has used one.
    var trampolineSlot: Int?
    /// Sent through its slot to un-arm this page, not seen stopped since.
    var trampolinePage: RemoteAddress?
    /// Its slot's call failed for this page: the next fault there takes the slow path.
    var slowPathPage: RemoteAddress?
    /// The output buffers of the call it was resumed into at its entry,
    /// un-armed there; until its next stop (then the call has run or will
    /// be entered again).
    var callOutputs: PageSet?
    /// The words the kernel writes as it ends (its `clear_child_tid`, its
    /// robust futexes), un-armed at its `exit`: kept writable by sweeps
    /// until it is gone (it writes them after its exit event stop).
    var exitWords: [AddressRange] = []
    /// Its `clear_child_tid` word and the value it held at its exit
    /// (`keepExitWordsOutOfSweeps`): once it holds another the exit words are written.
    var exitTidWord: (address: RemoteAddress, value: UInt64)?
    /// Its first stop came before its parent's clone event.
    var awaitsCloneEvent = false
    /// Kept stopped for this, not resumed (`ProcessTracker.serveWaiting`).
    var waiting: StopWaiting?
}

/// Why a thread is kept at its stop until another thread's memory call
/// (mmap, munmap, mremap, brk, mprotect, ...) has reached its exit stop.
/// Between the entry and the exit of such a call the kernel's mappings and
/// PageWatch's model differ, and an exit handled late would undo what was
/// decided meanwhile: the model is changed by one such call at a time.
enum StopWaiting {
    /// At the sweep signal: the sweep (it marks a phase: the thread's next
    /// writes belong to the next interval).
    case sweepSignal
    /// At the entry of a memory call of its own.
    case memoryCall
    /// At a write fault: judged (whose? which page?) once the model is true.
    case fault
}

/// One traced process whose memory PageWatch tracks: the program, or with
/// `--follow-forks` a process it forked. Its threads, its tracked memory and
/// its own sweeps; the session (`Tracker`) routes each stop here.
final class ProcessTracker {
    typealias Arch = HostArchitecture

    unowned let session: Tracker
    var config: TrackerConfiguration { session.config }

    var pid: Int32
    /// The process that forked this one; nil for the program itself.
    let parent: Int32?
    var threads: [Int32: ThreadState] = [:]
    var injector: RemoteSyscall?
    /// The fault slots' data page as PageWatch maps it, when shared (`shareSlotData`).
    var slotData: SharedSlotData?
    /// False when the slots' data page may be another process's (a fork
    /// child's copy that could not be replaced): faults take the slow path.
    var slotsUsable = true
    var memory = TrackedMemory()
    /// Addresses inside thread stacks (stack pointers seen at clone), for `--track stack`.
    var stackAnchors: [RemoteAddress] = []
    var pendingSweep: SweepReason?
    /// Since when the pending sweep waits (`pursuePendingSweep`), with the
    /// sweep count then (a sweep since: a new one is pending).
    var sweepPendingSince: (sweeps: Int, ns: UInt64)?
    /// The pages the last sweep reported and left writable (it could not
    /// re-arm them): reported again by the next, which says so.
    var leftWritable = PageSet()
    var sweeps = 0
    /// Threads gone before their parent's clone event was seen (see there).
    var endedBeforeItsCloneEvent: Set<Int32> = []
    var faultsThisInterval = 0
    /// The siginfo of the stop being handled, when read already (`settleTrampoline`).
    var stopSignalInfo: (tid: Int32, info: SignalInfo)?
    var totalFaults = 0
    var finalSweepDone = false
    var end: ProgramEnd?
    var endTimeNs: UInt64 = 0
    /// Signals whose handler runs on the sigaltstack (SA_ONSTACK).
    var onStackSignals: UInt64 = 0
    /// The program's SIGSEGV action as the kernel holds it (the raw
    /// `struct kernel_sigaction`), to put back where a write fault's forced
    /// signal reset it (`restoreSegvActionIfReset`); nil until learned.
    var segvAction: [UInt8]?
    /// A thread's `/proc/PID/task/TID/stat`, held open (`signalDispositions`).
    var dispositionProbe: (tid: Int32, fd: Int32)?
    /// The writers of the pages dirtied since the last sweep (issue 5).
    var ledger = WriterLedger()
    /// Unwinds writers' stacks; made at the first need, per image.
    var unwinder: Unwinder?
    /// `/proc/PID/maps` as last read: writers are symbolized against it.
    var lastMaps: [Mapping] = []
    /// Frames by instruction pointer (inner frames looked up at IP-1 have
    /// their own entries), kept while the code mappings stay the same.
    var frameCache: [FrameKey: Frame] = [:]

    init(session: Tracker, pid: Int32, parent: Int32?) {
        self.session = session
        self.pid = pid
        self.parent = parent
    }

    deinit {
        if let probe = dispositionProbe { close(probe.fd) }
    }

    /// PageWatch let go of this process (`stopTracking`): nothing is armed in
    /// it, and its stops are resumed as without PageWatch.
    var trackingStopped = false
    /// The pages tracked when tracking stopped: another thread's write
    /// fault there, racing with the stop, is PageWatch's (`isReleasedPageFault`).
    var releasedRanges = PageSet()
    var releasedFaults: [Int32: RemoteAddress] = [:]
    /// The program's io_uring instances and requests in flight (ProcessTracker+IOUring).
    var ioUring = IOUringState()
    /// A sweep of it had selected pages (`warnIfNothingWasEverSelected`).
    var everSelected = false
    /// `--verify-contents`: the armed pages' copies (`checkContents`).
    lazy var contentCopies: ContentCopies? = config.verifyContents ? ContentCopies() : nil

    /// Ended, and no vfork child still borrows its address space.
    var isDone: Bool { end != nil && !threads.values.contains(where: \.vforkChild) }

    func emit(_ record: LogRecord) { session.emit(record) }
    func trace(_ message: @autoclosure () -> String) { session.trace(message()) }

    /// The model of a child forked from this process at its fork event: the
    /// same pages armed (the child's copy of the address space has the same
    /// protections), every tracked page dirty (its first sweep reports all of
    /// its memory, which is new to PageWatch), the forking thread's state.
    func forkedCopy(pid child: Int32, thread tid: Int32) -> ProcessTracker {
        let copy = ProcessTracker(session: session, pid: child, parent: pid)
        copy.injector = injector  // the gadget page is copied with the rest
        // Its data page is the parent's shared one until its first stop
        // replaces it (`shareSlotData`): no slot before.
        copy.slotsUsable = false
        copy.injector?.journal = nil  // the guardian watches the attached process only
        copy.memory = memory
        for region in memory.regions { copy.memory.markDirty(region.range) }
        copy.stackAnchors = stackAnchors
        copy.onStackSignals = onStackSignals
        copy.segvAction = segvAction
        UserfaultRanges.shared.forked(from: pid, child: child)
        let state = ThreadState()
        state.altStack = threads[tid]?.altStack
        state.altStackKnown = threads[tid]?.altStackKnown ?? true
        state.rseqKnown = threads[tid]?.rseqKnown ?? false  // inherited registration, pinned in the copy
        state.clearChildTid = threads[tid]?.newThreadClearTid
        copy.threads[child] = state
        return copy
    }

    /// The writer at `tid`'s stop: its call stack (`--stack-depth` frames),
    /// and `kernel` when the kernel writes for it. Empty stacks when
    /// attribution is off.
    func writer(_ kernel: String?, tid: Int32) -> Writer {
        guard config.stackDepth > 0 else { return Writer(kernel: kernel, stack: []) }
        if unwinder == nil { unwinder = try? Unwinder(pid: pid, images: session.unwindImages) }
        return Writer(kernel: kernel, stack: unwinder?.callStack(tid: tid, maxDepth: config.stackDepth) ?? [])
    }

    /// The regions armed now: what a fork child not followed must get back.
    func armedRegions() -> [ProtectionChange] {
        memory.regions.filter { $0.armed.setCount > 0 }
            .map { ProtectionChange(range: $0.range, protection: $0.protection) }
    }

    // MARK: - Stops

    /// A stop of one of this process's threads (routed by the session).
    func handle(_ event: StopEvent) throws {
        let tid = event.tid
        stopSignalInfo = nil
        threads[tid]?.callOutputs = nil
        if threads[tid]?.trampolinePage != nil, try settleTrampoline(tid, at: event) { return }
        let lingering = threads[tid]?.interruptMayLinger == true
        threads[tid]?.interruptMayLinger = false
        if threads[tid]?.interruptPending == true || lingering {
            switch event {
            case .interruptStop, .syscallStop: try undoInterruptEINTR(tid, onlyWithoutSignal: !(threads[tid]?.interruptPending ?? false))
            default: break
            }
        }
        if case .syscallStop = event {
            // The kernel drops a pending PTRACE_INTERRUPT at a syscall stop
            // (ptrace_stop: "any trap clears pending STOP trap"): attach
            // mode, resuming with PTRACE_SYSCALL, serves the sweep at the
            // call's exit instead, or asks again. (Not at other stops: at a
            // seccomp stop no sweep is served, and asking again at each
            // would interrupt every call of a busy program.) Unless it was
            // sent after the thread took this stop and before PageWatch saw
            // it: then it is still pending, and the call the thread is
            // resumed into returns EINTR at its exit; that stop undoes it
            // too (`interruptMayLinger`).
            if threads[tid]?.interruptPending == true { threads[tid]?.interruptMayLinger = true }
            threads[tid]?.interruptPending = false
        }
        if threads[tid]?.preexisting == true {
            switch event {
            case .interruptStop, .groupStop:
                break  // its first stop, below
            case .exited, .killed, .event(_, .exit):
                threads[tid]?.preexisting = false
                session.firstStopSeen(tid)  // gone before it: nothing to learn
            default:
                // Any other trap dropped its pending interrupt (ptrace_stop
                // clears JOBCTL_TRAP_STOP): ask again, the first sweep waits for it.
                if (try? Ptrace.interrupt(tid)) != nil { threads[tid]?.interruptPending = true }
            }
        }
        switch event {
        case .exited(_, let code):
            if tid == pid && end == nil { finish(.exited(code: code)) } else { threadGone(tid) }
        case .killed(_, let sig, _):
            if tid == pid && end == nil { finish(.killed(signal: sig)) } else { threadGone(tid) }
        case .event(_, .exit):
            threads[tid]?.exiting = true
            keepExitWordsWritable(tid)
            if threads.values.allSatisfy({ $0.exiting || $0.vforkChild }) && !finalSweepDone && threads[tid]?.vforkChild != true {
                // The last thread: memory is still readable, nothing can run.
                try finalSweep(reason: .exit)
            }
            try session.proceed(tid)
        case .event(_, .clone):
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            // The new thread runs at once: it may have ended already (never
            // to stop again: a state for it would wait forever).
            if endedBeforeItsCloneEvent.remove(child) == nil, threads[child] == nil { threads[child] = ThreadState() }
            threads[child]?.awaitsCloneEvent = false
            let clearTid = threads[tid]?.newThreadClearTid
            threads[child]?.clearChildTid = clearTid
            threads[tid]?.newThreadClearTid = nil
            threads[tid]?.completingSyscall = Int64(child)
            try sweepIfPending(in: tid)
            try resume(tid)
        case .event(_, .exec) where threads[tid]?.vforkChild == true:
            // The vfork child has its own address space now: no longer ours.
            threads[tid] = nil
            try session.vforkChildExeced(tid, parent: self)
        case .event(_, .exec):
            threads[tid]?.completingSyscall = 0
            try startImage(tid: tid)
            try resume(tid)
        case .event(_, .seccomp):
            try handleSyscallEntry(tid: tid)
        case .event(_, let kind) where kind == .fork || kind == .vfork:
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            threads[tid]?.completingSyscall = Int64(child)
            try session.forked(child, kind: kind, parent: self, thread: tid)
            // Not after vfork: the parent runs no code of ours until the child
            // execs or exits, and the child waits for us.
            if kind == .fork { try sweepIfPending(in: tid) }
            try resume(tid)
        case .event:
            try sweepIfPending(in: tid)
            try resume(tid)
        case .interruptStop:
            if Tracker.debug, let r = try? Arch.readRegisters(tid: tid) {
                trace("  at \(Arch.instructionPointer(r)) syscall \(Arch.syscallNumber(r)) result \(Arch.syscallResult(r))")
            }
            threads[tid]?.interruptPending = false
            threads[tid]?.inGroupStop = false
            try learnRseq(tid)
            if threads[tid]?.preexisting == true { try firstAttachStop(tid) }
            try sweepIfPending(in: tid)
            try resume(tid)
        case .groupStop:
            // Stay stopped as without the tool until SIGCONT (hazard 18).
            threads[tid]?.inGroupStop = true
            threads[tid]?.interruptPending = false
            if threads[tid]?.preexisting == true {
                // Attached while stopped: learn what can be learned without running code.
                try learnRseq(tid)
                learnClearTid(tid)
                threads[tid]?.preexisting = false
                session.firstStopSeen(tid)
            }
            if session.detaching != nil {
                session.parked.insert(tid)  // detached from here, it stays stopped
            } else {
                try Ptrace.listen(tid)
            }
        case .syscallStop:
            if let pending = threads[tid]?.pendingExit {
                threads[tid]?.pendingExit = nil
                try handleSyscallExit(tid: tid, pending)
            } else if session.resumeMode == .syscallStops, try Ptrace.syscallStopKind(tid) == .entry {
                // Attach mode: every syscall entry, as the seccomp stops of launch mode.
                try handleSyscallEntry(tid: tid)
            } else {
                if Tracker.debug, let r = try? Arch.readRegisters(tid: tid) {
                    trace("  exit of \(Arch.syscallNumber(r)): \(Arch.syscallResult(r))")
                }
                // A syscall exit (attach mode) can serve a sweep like an interrupt stop.
                try sweepIfPending(in: tid)
                try resume(tid)
            }
        case .unknown:
            try resume(tid)
        case .signalDelivery(_, let sig):
            threads[tid]?.inGroupStop = false
            try handleSignal(sig, tid: tid)
        }
    }

    func handleSignal(_ sig: Int32, tid: Int32) throws {
        if sig == Signal.SIGSEGV {
            let info = stopSignalInfo?.tid == tid ? stopSignalInfo!.info : try Ptrace.signalInfo(tid)
            stopSignalInfo = nil
            if try handleSegv(info, tid: tid) { return }
        }
        if sig == config.sweepSignal {
            try learnRseq(tid)
            if !finalSweepDone && !givesUpAtSweep { pendingSweep = .signal }
            try sweepIfPending(in: tid)
            if pendingSweep != nil {
                threads[tid]?.waiting = .sweepSignal  // it must wait (sweepIfPending)
                return
            }
            try resume(tid)  // swallowed
            return
        }
        // A handler on an alternate stack the thread set before an attach:
        // where is it? (Asked with the signal held, below.)
        let unknownStack = threads[tid]?.altStackKnown == false && onStackSignals & (UInt64(1) << UInt64(sig - 1)) != 0
        let area = unknownStack ? nil : try signalFrameArea(sig, tid: tid)
        let frame = armedPages(ofFrame: area)
        if pendingSweep != nil || !frame.isEmpty || unknownStack {
            // Keep the program's signal with its siginfo across our injections.
            let own = try Ptrace.holdSignal(tid)
            try learnRseq(tid)
            if unknownStack { try learnAltStack(tid) }
            // The sweep first: it re-arms pages, and the frame's must stay
            // writable (so after a sweep the frame's armed pages are found again).
            let swept = pendingSweep != nil
            try sweepIfPending(in: tid)
            let frameNow = swept || unknownStack ? armedPages(ofFrame: try signalFrameArea(sig, tid: tid)) : frame
            let framer = writer("signal frame " + Signal.name(sig), tid: tid)
            for range in frameNow.ranges { try unarmRange(range, by: framer, tid: tid) }
            threads[tid]?.held.insert(own, at: 0)
            try resume(tid)
            return
        }
        keepWritable(frame: area, tid: tid)
        try session.proceed(tid, signal: sig)
    }

    /// Hazard 2: to run a handler the kernel writes the signal frame below
    /// the stack pointer (past the red zone), or at the top of the thread's
    /// sigaltstack for an SA_ONSTACK handler; on an armed page that write
    /// fails and the kernel kills the program. Returns the pages the frame
    /// may cover when `sig` has a handler.
    func signalFrameArea(_ sig: Int32, tid: Int32) throws -> AddressRange? {
        guard memory.trackedPageCount > 0, try caughtSignals() & (1 << UInt64(sig - 1)) != 0 else { return nil }
        var sp = Arch.stackPointer(try Arch.readRegisters(tid: tid))
        var frameBytes = Arch.redZone + signalFrameSize
        if onStackSignals & (1 << UInt64(sig - 1)) != 0, let alt = threads[tid]?.altStack, !alt.contains(sp) {
            sp = alt.end  // the kernel switches to the top of the sigaltstack
            frameBytes = signalFrameSize
        }
        return AddressRange(start: RemoteAddress(sp.value &- frameBytes), end: sp).pageAligned
    }

    /// The armed pages of a `signalFrameArea`.
    func armedPages(ofFrame area: AddressRange?) -> PageSet {
        guard let area else { return PageSet() }
        var armed = PageSet()
        var page = area.start
        while page < area.end {
            if case .armed = memory.state(of: page) { armed.insert(page: page) }
            page = page + Page.size
        }
        return armed
    }

    /// The kernel writes a delivered signal's frame when the thread next
    /// runs, which may be after PageWatch has gone on to a sweep in another
    /// thread: like a call's output buffers, the frame's pages are kept out
    /// of sweeps until the thread stops again (a Go thread got SIGSEGV for
    /// its SIGURG frame when a sweep re-armed its signal stack in between).
    func keepWritable(frame area: AddressRange?, tid: Int32) {
        guard let area, let state = threads[tid] else { return }
        var pages = state.callOutputs ?? PageSet()
        pages.insert(area)
        state.callOutputs = pages
    }

    /// The largest signal frame the kernel builds here: AT_MINSIGSTKSZ from
    /// the auxiliary vector (xsave state + rt_sigframe), plus alignment slack.
    lazy var signalFrameSize: UInt64 = {
        let minimum = (try? ProcFS.auxiliaryValue(pid: liveThread(), key: 51)) ?? nil  // AT_MINSIGSTKSZ
        return max(minimum ?? 0, 4096) + 256
    }()

    /// The signals with a handler (the kernel's sigcatch).
    func caughtSignals() throws -> UInt64 {
        let tid = liveThread()
        guard let d = signalDispositions(tid: tid) else {
            throw TraceError.call("read /proc/\(pid)/task/\(tid)/stat", .ESRCH, tid: tid)
        }
        return d.caught
    }

    /// Un-arms every armed page in `range` (they become dirty), written by `writer`.
    func unarmRange(_ range: AddressRange, by writer: Writer, tid: Int32) throws {
        var page = range.start
        while page < range.end {
            if case .armed(let protection) = memory.state(of: page) {
                noteWrite(page, by: writer, fault: false, tid: tid)
                try unarm(page, protection, tid: tid)
            }
            page = page + Page.size
        }
    }

    /// Returns true when the SIGSEGV was PageWatch's and has been handled.
    func handleSegv(_ info: SignalInfo, tid: Int32) throws -> Bool {
        if info.code == SignalInfo.SI_KERNEL {
            // The kernel could not update the thread's rseq area (hazard 3).
            return try rescueRseq(tid)
        }
        guard info.code == SignalInfo.SEGV_ACCERR else { return false }
        if memoryCallInFlight(besides: tid) {
            threads[tid]?.waiting = .fault
            return true
        }
        let page = Page.floor(info.faultAddress)
        if pendingSweep != nil, memory.state(of: page) != .untracked { try sweepAtFault(tid: tid) }
        trace("  fault at \(info.faultAddress): \(memory.state(of: page))")
        switch memory.state(of: page) {
        case .untracked:
            return false
        case .armed(let protection):
            noteWrite(page, by: writer(nil, tid: tid), fault: true, tid: tid)
            threads[tid]?.lastSuppressedFault = nil
            faultsThisInterval += 1
            totalFaults += 1
            try restoreSegvActionIfReset(tid: tid)
            if try unarmThroughTrampoline(page, protection, tid: tid) { return true }
            try unarm(page, protection, tid: tid)
            try resume(tid)
            return true
        case .writable(let protection):
            // Another thread got there first (hazard 11): just retry the write.
            // At the same page again, make sure the kernel has the program's
            // protection there; a third time the fault is not ours (hazard 14).
            guard protection.contains(.write) else { return false }
            let state = threads[tid] ?? ThreadState()
            let repeats: Int
            if state.lastSuppressedFault == page { repeats = state.suppressedRepeats + 1 } else { repeats = 0 }
            state.lastSuppressedFault = page
            state.suppressedRepeats = repeats
            threads[tid] = state
            if repeats >= 2 {
                threads[tid]?.lastSuppressedFault = nil
                return false
            }
            try restoreSegvActionIfReset(tid: tid)
            if repeats == 1 {
                try protect(AddressRange(start: page, end: page + Page.size), protection, tid: tid)
            }
            ledger.countFault(at: page)
            faultsThisInterval += 1
            totalFaults += 1
            try resume(tid)
            return true
        }
    }

    /// Makes one armed page writable again and marks it dirty.
    func unarm(_ page: RemoteAddress, _ protection: Protection, tid: Int32) throws {
        let range = AddressRange(start: page, end: page + Page.size)
        do {
            try protect(range, protection, tid: tid)
            memory.markWritten(page)
            return
        } catch TraceError.remoteSyscall(_, let errno, _, _) where errno == .ENOMEM {
            // vm.max_map_count reached (hazard 12): every page made writable
            // inside an armed range split a VMA. Below: re-arm the whole
            // region early, keeping its dirty bits (the report stays exact),
            // which merges its VMAs back into one; then try again.
        }
        if let plan = memory.rearmRegionPlan(containing: page) {
            do {
                for change in plan { try protect(change.range, change.protection, tid: tid) }
                memory.markRegionArmedKeepingDirty(containing: page)
                try protect(range, protection, tid: tid)
                memory.markWritten(page)
                return
            } catch TraceError.remoteSyscall(_, let errno, _, _) where errno == .ENOMEM {
                // Still no room: fall through to the last resort.
            }
        }
        try unarmRegion(containing: page, tid: tid)
    }

    /// The last resort at vm.max_map_count: the region's program protection
    /// everywhere (one VMA again), every page dirty until the next sweep.
    func unarmRegion(containing page: RemoteAddress, tid: Int32) throws {
        if let whole = memory.markRegionWritten(containing: page) {
            try protect(whole.range, whole.protection, tid: tid)
        }
    }

    /// Several `mprotect`s in one injection when there are several (the
    /// batch loop, issue 6), else one; their results in order (0 or -errno).
    func protectAll(_ changes: [ProtectionChange], tid: Int32) throws -> [Int64] {
        guard changes.count > 1, Self.batchedSweeps, let injector else {
            return try changes.map { c in
                do { try protect(c.range, c.protection, tid: tid); return 0 } catch TraceError.remoteSyscall(_, let e, _, _) {
                    return -Int64(e.rawValue)
                }
            }
        }
        trace("  mprotect batch of \(changes.count) in \(tid)")
        let (results, outcome) = try injector.mprotectBatch(changes.map { ($0.range, $0.protection) }, in: tid,
                                                            completing: threads[tid]?.completingSyscall)
        noteInjection(outcome, tid: tid)
        if Tracker.debug {
            for (c, r) in zip(changes, results) where r != 0 {
                trace("    \(c.range) \(c.protection): \(r); maps: \(mappings(overlapping: c.range, tid: tid))")
            }
        }
        return results
    }

    /// Every region with armed pages gets the program's protection back
    /// (detach, untracked), in one injection.
    func giveBackProtections(tid: Int32) throws {
        let changes = armedRegions()
        for (change, result) in zip(changes, try protectAll(changes, tid: tid)) where result != 0 {
            throw Self.mprotectFailed(result, at: change.range.start, tid: tid)
        }
    }

    /// A batched mprotect's result that is not 0: -errno, or 1 when the
    /// batch never reached it.
    static func mprotectFailed(_ result: Int64, at address: RemoteAddress, tid: Int32) -> TraceError {
        .remoteSyscall("mprotect", Errno(result < 0 ? Int32(-result) : EIO), tid: tid, address: address)
    }

    /// PAGEWATCH_SWEEP=one-by-one: one injection per re-armed range (for the benchmark's comparison).
    static let batchedSweeps = getenv("PAGEWATCH_SWEEP").map { String(cString: $0) != "one-by-one" } ?? true

    func protect(_ range: AddressRange, _ protection: Protection, tid: Int32) throws {
        trace("  mprotect \(range) \(protection) in \(tid)")
        guard let injector else { return }
        if threads[tid]?.entryRegisters != nil { threads[tid]?.injectedAtEntry = true }
        let outcome: RemoteSyscall.Outcome
        do {
            outcome = try injector.mprotect(range, protection, in: tid, completing: threads[tid]?.completingSyscall)
        } catch {
            if Tracker.debug {
                trace("    failed; maps: \(mappings(overlapping: range, tid: tid))")
            }
            throw error
        }
        noteInjection(outcome, tid: tid)
    }

    /// The thread's side of any injection: one made at a syscall entry
    /// abandons the call (rewound at the resume); signals that arrived
    /// meanwhile are held; an interrupt stop passed on the way was consumed.
    func noteInjection(_ outcome: RemoteSyscall.Outcome, tid: Int32) {
        if threads[tid]?.entryRegisters != nil { threads[tid]?.injectedAtEntry = true }
        threads[tid]?.held.append(contentsOf: outcome.heldSignals)
        if outcome.consumedInterrupt { threads[tid]?.interruptPending = false }
    }

    /// PAGEWATCH_DEBUG: the mappings around a failed mprotect, as maps shows them now.
    func mappings(overlapping range: AddressRange, tid: Int32) -> String {
        ((try? ProcFS.maps(of: tid)) ?? []).filter { $0.range.overlaps(range) }
            .map { "\($0.range) \($0.protection)" }.joined(separator: ", ")
    }

    /// Resumes a stopped thread, first delivering anything held for it.
    func resume(_ tid: Int32, exit pending: PendingSyscallExit? = nil) throws {
        // Kept for a thread parked for the detach: its injections there must
        // put back the call's result too (a clone's parent became its child).
        if session.detaching == nil || pending != nil { threads[tid]?.completingSyscall = nil }
        var rewound = false
        if let entry = threads[tid]?.entryRegisters {
            threads[tid]?.entryRegisters = nil
            if threads[tid]?.injectedAtEntry == true {
                // PageWatch ran code at this syscall entry, which abandoned the
                // call: run the syscall instruction again (it stops here again).
                threads[tid]?.injectedAtEntry = false
                try Arch.writeRegisters(Arch.rewindingSyscall(entry), tid: tid)
                rewound = true
            }
        }
        if let pending, !rewound {
            threads[tid]?.pendingExit = pending
            try Ptrace.resumeToSyscallExit(tid)
            return
        }
        try absorbHeldFaults(tid)
        guard let next = threads[tid]?.held.first, session.detaching == nil else {
            // (Detaching: held signals are sent again after the detach.)
            try session.proceed(tid)
            return
        }
        // A signal that arrived during PageWatch's injections (a sweep's
        // re-arming among them) gets its frame's pages un-armed like any
        // other (hazard 2): a shell's SIGCHLD handler died by SIGSEGV here.
        if threads[tid]?.altStackKnown == false, onStackSignals & (UInt64(1) << UInt64(next.signal - 1)) != 0 {
            try learnAltStack(tid)
        }
        let area = try signalFrameArea(next.signal, tid: tid)
        let frame = armedPages(ofFrame: area)
        if !frame.isEmpty {
            let framer = writer("signal frame " + Signal.name(next.signal), tid: tid)
            for range in frame.ranges { try unarmRange(range, by: framer, tid: tid) }
        }
        guard let state = threads[tid], !state.held.isEmpty else { return try session.proceed(tid) }
        let first = state.held.removeFirst()
        trace("  delivering held \(Signal.name(first.signal)) to \(tid)")
        let rest = state.held
        state.held = []
        threads[tid] = state
        keepWritable(frame: area, tid: tid)  // (`first` is `next`)
        try Ptrace.deliver(first, to: tid, mode: session.resumeMode)
        // Only one signal can ride on a resume; the rest are sent again (their
        // siginfo becomes SI_TKILL). In practice at most one arrives.
        for h in rest { try? Ptrace.tgkill(pid, tid, h.signal) }
    }

    /// A write fault can be pending when PageWatch stops a thread (it
    /// faulted just before a PTRACE_INTERRUPT): it then arrives during an
    /// injection and is held. Such a SIGSEGV is PageWatch's like any other:
    /// handle it here instead of delivering it; the instruction runs again.
    /// Also called when PageWatch lets go of the process (detach, untracked):
    /// a held fault there would otherwise be sent again after the release and
    /// kill the program (the pages are the program's again by then). The
    /// same goes for the kernel's forced SIGSEGV for an armed rseq area.
    func absorbHeldFaults(_ tid: Int32) throws {
        var rounds = 0
        while rounds < 8, let state = threads[tid],
              let i = state.held.firstIndex(where: { $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SEGV_ACCERR }) {
            rounds += 1
            let page = Page.floor(state.held[i].faultAddress)
            switch memory.state(of: page) {
            case .armed(let protection):
                threads[tid]?.held.remove(at: i)
                noteWrite(page, by: writer(nil, tid: tid), fault: true, tid: tid)
                try restoreSegvActionIfReset(tid: tid)
                try unarm(page, protection, tid: tid)
                faultsThisInterval += 1
                totalFaults += 1
            case .writable(let protection) where protection.contains(.write):
                threads[tid]?.held.remove(at: i)
                try restoreSegvActionIfReset(tid: tid)
            default:
                return  // the program's own fault: delivered as it is
            }
        }
        if let i = threads[tid]?.held.firstIndex(where: { $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SI_KERNEL }),
           let area = try? Ptrace.rseqArea(tid), case .armed = memory.state(of: area.address) {
            threads[tid]?.held.remove(at: i)
            threads[tid]?.rseqKnown = true
            try pin(area.range.pageAligned, tid: tid)
        }
    }

    // MARK: - Threads and images

    /// A new program image (the first exec, or a later one): forget the old
    /// address space and place the injection gadget in the new one (hazard 9).
    func startImage(tid: Int32) throws {
        if tid != pid {
            // A non-leader thread exec'd: it takes over the leader's pid.
            threads[tid] = nil
        }
        let completing = threads[pid]?.completingSyscall ?? threads[tid]?.completingSyscall ?? 0
        threads = [pid: threads[pid] ?? ThreadState()]
        threads[pid]?.rseqKnown = false
        threads[pid]?.completingSyscall = completing
        memory.reset()
        ioUring = IOUringState()  // io_uring fds are always close-on-exec
        UserfaultRanges.shared.forget(pid: pid)  // a new address space
        stackAnchors = []
        faultsThisInterval = 0
        ledger = WriterLedger()
        unwinder = nil
        lastMaps = []
        frameCache = [:]
        slotData = nil
        let (gadget, held) = try RemoteSyscall.bootstrap(in: pid, completing: completing)
        injector = gadget
        injector?.journal = guardianJournal
        threads[pid]?.held.append(contentsOf: held)
        shareSlotData(tid: pid)
        try learnSignalActions(tid: pid)  // exec reset the handlers; SIG_IGN stays
        if sweeps > 0 || totalFaults > 0 {
            let path = ProcFS.executable(of: pid) ?? (parent == nil ? config.command[0] : "")
            emit(.exec(pid: pid, path: path, timeNs: wallClockNs()))
        }
        session.checkExecPrivilege(pid: pid)
    }

    func pin(_ range: AddressRange, tid: Int32) throws {
        trace("  pin \(range)")
        for change in memory.pin(range) {
            try protect(change.range, change.protection, tid: tid)
        }
    }

    /// Looks up the thread's rseq area once it has one and pins it (hazard 3).
    func learnRseq(_ tid: Int32) throws {
        guard let state = threads[tid], !state.rseqKnown else { return }
        guard let area = try? Ptrace.rseqArea(tid) else { return }
        threads[tid]?.rseqKnown = true
        try pin(area.range.pageAligned, tid: tid)
    }

    /// A SIGSEGV the kernel forced because it could not write the rseq area:
    /// pin the area and let the thread go on, as it would have without us.
    func rescueRseq(_ tid: Int32) throws -> Bool {
        guard let area = try? Ptrace.rseqArea(tid) else { return false }
        guard case .armed = memory.state(of: area.address) else { return false }
        threads[tid]?.rseqKnown = true
        try restoreSegvActionIfReset(tid: tid)
        try pin(area.range.pageAligned, tid: tid)
        try resume(tid)
        return true
    }

    /// Hazards 15 and 16: PageWatch's PTRACE_INTERRUPT of a thread blocked
    /// in `epoll_wait` and a few others ends the call with EINTR, which the
    /// kernel never restarts (as after SIGSTOP and SIGCONT without the tool).
    /// The program would see an error it would not have had: the call is
    /// rewound to run again (with its full timeout again, if it had one).
    /// `onlyWithoutSignal`: not sure an interrupt of PageWatch's ended the
    /// call (`interruptMayLinger`): not when a signal is pending for the
    /// thread, whose EINTR the program must see.
    func undoInterruptEINTR(_ tid: Int32, onlyWithoutSignal: Bool = false) throws {
        let regs = try Arch.readRegisters(tid: tid)
        guard Arch.syscallResult(regs) == -Int64(Errno.EINTR.rawValue),
              Arch.row(number: Arch.syscallNumber(regs))?.endedByStop == true else { return }
        if onlyWithoutSignal, (try? ProcFS.unblockedPendingSignals(of: tid, shared: true)) != 0 { return }
        trace("  interrupt ended syscall \(Arch.syscallNumber(regs)) with EINTR: rewound")
        try Arch.writeRegisters(Arch.rewindingSyscall(regs), tid: tid)
    }

    /// A thread to name in /proc paths: the main thread may have exited (pthread_exit).
    func liveThread() -> Int32 {
        if let main = threads[pid], !main.exiting { return pid }
        for (tid, state) in threads where !state.exiting { return tid }
        return threads.keys.first ?? pid
    }

    func threadGone(_ tid: Int32) {
        unwinder?.threadGone(tid: tid)
        if threads[tid]?.awaitsCloneEvent == true { endedBeforeItsCloneEvent.insert(tid) }
        threads[tid] = nil
    }

    // MARK: - Sweeps

    func requestSweep(_ reason: SweepReason) {
        if pendingSweep == nil, !finalSweepDone { pendingSweep = reason }
    }

    /// Interval sweeps need a stopped thread to inject into: interrupt one
    /// that is safe to interrupt. A thread blocked in a call that writes user
    /// memory when interrupted (nanosleep's remaining time) into an armed page
    /// would get EFAULT (hazard 1), so such threads are left alone; when no
    /// thread is safe, the sweep reports without re-arming (`reportOnlySweep`).
    /// Returns false when no thread could be interrupted.
    @discardableResult
    func requestInterruptIfNeeded(excluding excluded: Int32? = nil) -> Bool {
        if excluded == nil, threads.values.contains(where: \.interruptPending) { return true }
        // Not a thread PageWatch keeps at a stop (`waiting`): it stops nowhere else until let go.
        let candidates = threads.keys.sorted().filter { t in
            let s = threads[t]!
            return t != excluded && !s.exiting && !s.inGroupStop && s.waiting == nil
        }
        for t in candidates where safeToInterrupt(t) {
            if (try? Ptrace.interrupt(t)) != nil {
                threads[t]?.interruptPending = true
                threads[t]?.interruptSentNs = monotonicNs()
                return true
            }
        }
        return false
    }

    func safeToInterrupt(_ tid: Int32) -> Bool {
        switch ProcFS.activity(pid: pid, tid: tid) {
        // Sleeping in a page fault: the fault completes, then the thread stops.
        case .running, .outsideSyscall: return true
        case .unknown: return false
        case let .inSyscall(number, arguments):
            guard let written = SyscallOutputs.writtenOnInterruption(number: number, arguments: arguments) else {
                return false
            }
            return written.allSatisfy { range in
                var page = Page.floor(range.start)
                while page < range.end {
                    if case .armed = memory.state(of: page) { return false }
                    page = page + Page.size
                }
                return true
            }
        }
    }

    /// An interval sweep with no thread to run code in: report what is known.
    /// Dirty pages stay unarmed and dirty, so they are reported again next
    /// time: extra pages, never a missed one.
    func reportOnlySweep(reason: SweepReason) throws {
        pendingSweep = nil
        try refreshMaps()
        checkContents(tid: liveThread())
        let dirty = memory.dirtyPages()
        memory.clearPinnedDirty()
        emitSweep(reason: reason, dirty: dirty, reportedAgain: true)
    }

    func sweepIfPending(in tid: Int32) throws {
        guard let reason = pendingSweep, session.awaitingFirstStop.isEmpty,
              !memoryCallInFlight(besides: tid) else { return }
        try sweep(reason: reason, in: tid)
    }

    /// Threads kept at a stop (`StopWaiting`) go on once nothing holds them
    /// (after each stop the session handles): the sweep a thread stopped at
    /// the sweep signal waits for (in attach mode, one asked for before
    /// every thread was seen is the attach sweep, done meanwhile in another
    /// thread), then faults, then one memory call at a time.
    func serveWaiting() throws {
        guard threads.values.contains(where: { $0.waiting != nil }) else { return }
        for tid in threads.keys.sorted() where threads[tid]?.waiting == .sweepSignal {
            if pendingSweep == nil {
                threads[tid]?.waiting = nil
                try resume(tid)
            } else if session.awaitingFirstStop.isEmpty, !memoryCallInFlight(besides: tid) {
                threads[tid]?.waiting = nil
                try sweepIfPending(in: tid)
                try resume(tid)
            }
        }
        guard !memoryCallInFlight(besides: 0) else { return }
        for tid in threads.keys.sorted() where threads[tid]?.waiting == .fault {
            threads[tid]?.waiting = nil
            try handleSignal(Signal.SIGSEGV, tid: tid)
        }
        if let tid = threads.keys.sorted().first(where: { threads[$0]?.waiting == .memoryCall }) {
            threads[tid]?.waiting = nil
            try handleSyscallEntry(tid: tid)
        }
    }

    /// The pages threads were sent to un-arm through their trampoline slots
    /// and not seen since (in `range`, but `tid`'s): writable in the model,
    /// but their `mprotect` may not have run yet. Not those whose slot says
    /// it has (its result word, 0): that thread is past the call, and a
    /// sweep may re-arm the page (else a thread that blocks right after its
    /// last fault, as at a barrier, had that page reported again at every
    /// sweep, never written).
    func pagesInFlight(in range: AddressRange?, besides tid: Int32? = nil) -> [RemoteAddress] {
        threads.compactMap { other, state -> RemoteAddress? in
            guard other != tid, let page = state.trampolinePage,
                  range.map({ $0.pageAligned.contains(page) }) ?? true, case .writable = memory.state(of: page),
                  !slotCallSucceeded(state, tid: other) else { return nil }
            return page
        }
    }

    /// Whether `tid`'s slot has run its `mprotect`, successfully.
    func slotCallSucceeded(_ state: ThreadState, tid: Int32) -> Bool {
        guard let slot = state.trampolineSlot, let injector else { return false }
        return (try? slots(of: injector).result(slot, tid: tid)) == 0
    }

    /// Whether pages may be armed now. Not before the first sweep of an
    /// attach (every thread seen, its rseq area pinned; the gadget in place):
    /// until then the program's memory calls run as they are and new pages
    /// are left for that sweep, which arms them.
    var armsNow: Bool { injector != nil && session.awaitingFirstStop.isEmpty }

    /// Whether another thread is between the entry and the exit of one of
    /// the program's own memory calls (mmap, mprotect, ...). A sweep then
    /// waits for that exit: its maps could show the call's new mapping
    /// before the exit's handling (which takes maps as they are then, and
    /// would drop pages the sweep armed: the next write to one a fatal
    /// SIGSEGV), and its re-arming mprotect could run after the program's
    /// own and undo it. A change of the SIGSEGV action counts too: a fault
    /// checks the action against PageWatch's copy (`restoreSegvActionIfReset`).
    func memoryCallInFlight(besides tid: Int32) -> Bool {
        threads.contains { other, state in
            guard other != tid else { return false }
            switch state.pendingExit {
            case .memory?, .segvAction?: return true
            default: return false
            }
        }
    }

    /// Reports and re-arms. Re-protection comes before the dirty bits are
    /// cleared, so a write racing with the sweep lands in the next interval
    /// (hazard 19): pages written while we work are unarmed, hence dirty, and
    /// writes after their re-arm fault and are handled after this sweep.
    func sweep(reason: SweepReason, in tid: Int32) throws {
        if reason == .attach, try stopTrackingForIOUringBeforeAttach(tid: tid) { return }
        if givesUpAtSweep, let why = session.givingUp { return try stopTracking(because: why, tid: tid) }
        pendingSweep = nil
        // Re-armed pages may fault again legitimately: forget the race markers (hazards 11, 14).
        for t in threads.keys { threads[t]?.lastSuppressedFault = nil }
        try refreshMaps()
        checkContents(tid: tid)
        let dirty = memory.dirtyPages()
        var busy = outputsOfBlockedCalls(excluding: tid)
        // A page another thread was sent to un-arm through its trampoline
        // slot, not seen since, its call not yet run: that mprotect may still
        // run after this sweep and would leave the page writable behind an
        // armed model. It stays dirty, reported again next sweep.
        for page in pagesInFlight(in: nil, besides: tid) { busy.insert(AddressRange(start: page, end: page + Page.size)) }
        // Buffers of io_uring requests not yet completed: the kernel writes them later.
        busy.formUnion(ioUringBuffersInFlight())
        var changes: [ProtectionChange] = []
        for planned in memory.rearmPlan() {
            // Buffers another thread's blocked call will still write stay
            // writable (and dirty, so reported again): re-arming them now would
            // turn its copy-out into EFAULT (hazard 1).
            var pieces = PageSet([planned.range])
            for b in busy.intersection(planned.range).ranges { pieces.remove(b) }
            changes += pieces.ranges.map { ProtectionChange(range: $0, protection: planned.protection) }
        }
        for (change, result) in zip(changes, try protectAll(changes, tid: tid)) {
            if result == 0 {
                memory.markArmed(change.range)
            } else if result == -Int64(Errno.ENOMEM.rawValue) {
                // vm.max_map_count (hazard 12), possibly applied in part: give
                // the region its program protection everywhere; its pages stay
                // dirty and are reported again next sweep (never missed).
                try unarmRegion(containing: change.range.start, tid: tid)
            } else {
                throw Self.mprotectFailed(result, at: change.range.start, tid: tid)
            }
        }
        memory.clearPinnedDirty()
        memory.clearReadOnlyDirty()
        copyContents(dirty: dirty, tid: tid)
        publishForGuardian()
        emitSweep(reason: reason, dirty: dirty)
    }

    /// The output buffers of the calls other threads are in now: those
    /// PageWatch un-armed at their entry, and those of the calls /proc/PID/
    /// task/TID/syscall shows them blocked in; and the words exiting threads
    /// have yet to write; page-aligned.
    func outputsOfBlockedCalls(excluding tid: Int32) -> PageSet {
        var busy = PageSet()
        for (other, state) in threads {
            if other != tid { for r in state.callOutputs?.ranges ?? [] { busy.insert(r) } }
            if !state.exitWords.isEmpty {
                if exitWritesDone(state) {
                    state.exitWords = []  // written: re-armed like any other page from now on
                } else {
                    for r in state.exitWords { busy.insert(r.pageAligned) }
                }
            }
        }
        for other in threads.keys where other != tid {
            guard case let .inSyscall(number, arguments) = ProcFS.activity(pid: liveThread(), tid: other),
                  let call = Arch.syscall(number: number) else { continue }
            let outputs = SyscallOutputs(read: { a, n in (try? Ptrace.readMemory(other, a, count: n)) ?? [] })
            for r in outputs.ranges(call, arguments) ?? [] { busy.insert(r.pageAligned) }
        }
        return busy
    }

    /// The last sweep: report without re-arming (the program is exiting).
    func finalSweep(reason: SweepReason) throws {
        finalSweepDone = true
        pendingSweep = nil
        try? refreshMaps()
        checkContents(tid: liveThread())
        emitSweep(reason: reason, dirty: memory.dirtyPages())
    }

    /// `reported again`: the pages stay dirty for the next sweep (nothing
    /// was re-armed), so their writers are kept.
    func emitSweep(reason: SweepReason, dirty: PageSet, reportedAgain: Bool = false) {
        sweeps += 1
        if !dirty.isEmpty || !memory.regions.isEmpty { everSelected = true }
        var sites: [WriteSite]?
        if config.stackDepth > 0 {
            sites = ledger.sites(of: dirty, pinned: memory.pinned, keepingWriters: reportedAgain) { stack in
                stack.enumerated().map { i, ip in frame(ip, isReturnAddress: i > 0) }
            }
        } else if !reportedAgain {
            // No sites to name, but the ledger still starts again: it tells
            // the next interval's first writes (`noteWrite`).
            ledger = WriterLedger()
        }
        var record = SweepRecord(seq: sweeps, pid: pid, reason: reason, timeNs: wallClockNs(),
                                 ranges: dirty.ranges, faults: faultsThisInterval, sites: sites)
        noteRearming(&record, dirty: dirty, reportOnly: reportedAgain)
        emit(.sweep(record))
        faultsThisInterval = 0
    }

    /// Re-reads `/proc/PID/maps`: new selected mappings become tracked (and
    /// dirty), vanished ones are forgotten.
    func refreshMaps() throws {
        // Through a live thread: once the main thread has exited, /proc/PID/maps is empty.
        let maps = try ProcFS.maps(of: liveThread())
        // Empty: the thread read through has just exited (its mm is gone),
        // not a process without memory. Taken as is, every tracked page would
        // be forgotten and every frame left unnamed.
        guard !maps.isEmpty else { return }
        // PageWatch's own scratch pages (the trampoline's data page is writable) are never tracked.
        let programs = maps.filter { m in injector.map { !$0.scratch.contains(m.range.start) } ?? true }
        // A page a thread was sent to un-arm through its trampoline slot is
        // writable in the model, but the thread may not have run the slot's
        // mprotect yet: maps can still show it armed, which reconcile would
        // take for the program's own protection (and drop a read-only page
        // from tracking: the thread's write then faults on an untracked
        // page and kills it). Reconciled as armed, un-armed again after.
        let inFlight = pagesInFlight(in: nil)
        for page in inFlight { memory.markArmedKeepingDirty(AddressRange(start: page, end: page + Page.size)) }
        memory.reconcile(maps: programs, selection: config.selection, stackAnchors: stackAnchors)
        for page in inFlight {
            if case .armed = memory.state(of: page) { memory.markWritten(page) }
        }
        publishForGuardian()
        if unwinder != nil || !frameCache.isEmpty, code(of: maps) != code(of: lastMaps) {
            // A module came or went: cached unwind tables and names may be stale.
            unwinder?.mappingsChanged(maps: maps)
            frameCache = [:]
        }
        lastMaps = maps
    }

    func frame(_ ip: UInt64, isReturnAddress: Bool) -> Frame {
        let key = FrameKey(ip: ip, isReturnAddress: isReturnAddress)
        if let known = frameCache[key] { return known }
        let f = session.symbolizer.frame(ip: ip, in: lastMaps, isReturnAddress: isReturnAddress)
        frameCache[key] = f
        return f
    }

    /// The mappings unwinding and symbolizing read: file-backed, not writable.
    func code(of maps: [Mapping]) -> [Mapping] {
        maps.filter { $0.isFileBacked && !$0.protection.contains(.write) }
    }

    /// Gives up tracking this process without changing it: a last sweep
    /// (reason `untracked`) reports what was written, every armed page gets
    /// the program's protection back, and an `untracked` record says why.
    func stopTracking(because reason: String, tid: Int32) throws {
        try settleAllTrampolines()
        try? refreshMaps()
        try giveBackProtections(tid: tid)
        try absorbHeldFaults(tid)
        let dirty = memory.dirtyPages()
        pendingSweep = nil
        finalSweepDone = true
        emitSweep(reason: .untracked, dirty: dirty)
        emit(.untracked(pid: pid, reason: reason, timeNs: wallClockNs()))
        releasedRanges = memory.trackedRanges
        memory.reset()
        trackingStopped = true
    }

    /// After tracking stopped: whether `tid`'s SIGSEGV is a write fault on
    /// a page that was armed, taken before the protections were given back
    /// and reported after (another thread, in a multithreaded program). Its
    /// write can now run: the signal is dropped, once per thread and address
    /// (a repeat, or a page the program keeps without write, is its own).
    func isReleasedPageFault(_ tid: Int32) -> Bool {
        guard let info = try? Ptrace.signalInfo(tid), info.code == SignalInfo.SEGV_ACCERR,
              releasedRanges.contains(info.faultAddress), releasedFaults[tid] != info.faultAddress,
              let maps = try? ProcFS.maps(of: pid),
              maps.first(where: { $0.range.contains(info.faultAddress) })?.protection.contains(.write) == true else { return false }
        releasedFaults[tid] = info.faultAddress
        return true
    }

    func finish(_ how: ProgramEnd) {
        if !finalSweepDone {
            // Killed without an exit stop: report what is known.
            finalSweepDone = true
            emitSweep(reason: .exit, dirty: memory.dirtyPages())
        }
        end = how
        endTimeNs = wallClockNs()
    }
}
