import Glibc
import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchImage
import PageWatchLog
import PageWatchPtrace

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
    var threads: [Int32: TrackedThread] = [:]
    /// Runs PageWatch's code in it: the gadget, the slots, protection changes.
    var injector: ProcessInjector
    /// Who wrote which page: unwinder, frame cache, the ledger.
    let attribution: WriterAttribution
    var memory = TrackedMemory()
    /// The private anonymous memory tracked by userfaultfd instead (`--backend`).
    var writeProtect = WriteProtectedMemory()
    /// Addresses inside thread stacks (stack pointers seen at clone), for `--track stack`.
    var stackAnchors: [RemoteAddress] = []
    var pendingSweep: SweepReason?
    /// Since when the pending sweep waits (`pursuePendingSweep`), with the
    /// sweep count then (a sweep since: a new one is pending).
    var sweepPendingSince: (sweeps: Int, ns: UInt64)?
    /// The sweep count when a sweep without a stop was last found not
    /// enough (`sweepWithoutStop`): tried once per pending sweep.
    var stoplessSweepDeclined: Int?
    /// The pages the last sweep reported and left writable (it could not
    /// re-arm them): reported again by the next, which says so.
    var leftWritable = PageSet()
    var sweeps = 0
    /// Threads gone before their parent's clone event was seen (see there).
    var endedBeforeItsCloneEvent: Set<Int32> = []
    var faultsThisInterval = 0
    /// Pages left writable and reported without a fault (`WritePresumption`).
    var presumption: WritePresumption
    /// Time spent handling this process's stops since the last sweep, and
    /// when that sweep was (monotonic): how much PageWatch slows it down.
    var busyNs: UInt64 = 0
    var lastSweepNs = monotonicNs()
    /// PageWatch's work and the time of each of the last interval sweeps' intervals.
    var recentIntervalLoads: [(busyNs: UInt64, elapsedNs: UInt64)] = []
    var warnedAboutStarvation = false
    /// The siginfo of the stop being handled, when read already (`settleTrampoline`).
    var stopSignalInfo: (tid: Int32, info: SignalInfo)?
    var totalFaults = 0
    var finalSweepDone = false
    /// A thread of the program has gone into `exit_group`: any thread may
    /// be killed at any moment now, in the middle of an injection too (whose
    /// wait gives up on a dead thread: `Wait.nextUnlessDead`).
    /// No more sweeps: the exit's is the last.
    var groupExiting = false
    var end: ProgramEnd?
    var endTimeNs: UInt64 = 0
    /// The program's signal actions, as far as PageWatch needs them.
    var signalActions = KnownSignalActions()

    init(session: Tracker, pid: Int32, parent: Int32?) {
        self.session = session
        self.pid = pid
        self.parent = parent
        injector = ProcessInjector(session: session)
        presumption = WritePresumption(mode: session.config.presume, intervalNs: session.config.intervalNs)
        attribution = WriterAttribution(session: session, pid: pid)
        // A fork child's memory lost the registrations (no UFFD_FEATURE_EVENT_FORK): ptrace until its exec.
        if parent == nil, session.config.triesWriteProtect { writeProtect.state = .pending }
    }

    deinit {
        if let probe = signalActions.dispositionProbe { close(probe.fd) }
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
    /// The names of its tracked mappings a reader of the log knows (`ProcessTracker+MappingNames`).
    var namedMappings = MappingNames()
    /// The backends the log last named for it (`start`, `exec`); nil before either.
    var backendsSaid: [String: String]?
    /// Why a seccomp filter of the program's forbids making a userfaultfd
    /// in it (the call would be killed, trapped or seen by a supervisor);
    /// filters are inherited and never removed, so this holds for every
    /// later image and fork child. Nil: none known to.
    var seccompForbidsUserfaultfd: String?
    /// `--verify-contents`: the armed pages' copies (`checkContents`).
    lazy var contentCopies: ContentCopies? = config.verifyContents ? ContentCopies() : nil
    /// `--dump`: this process's part of the memory image, from its first sweep.
    var imageWriter: ImageWriter?

    /// `tid`'s state. Not among `threads`: the leader, forgotten after it
    /// ended, whose pid stays routed here for the process's end
    /// (`Tracker.process(ofThread:)`); a stand-in then, dropped after use,
    /// so that what is learned of a forgotten thread is forgotten too.
    func thread(_ tid: Int32) -> TrackedThread { threads[tid] ?? TrackedThread(tid: tid) }

    /// Ended, and no vfork child still borrows its address space.
    var isDone: Bool { end != nil && !threads.values.contains(where: \.vforkChild) }

    func emit(_ record: LogRecord) { session.emit(record) }
    func trace(_ message: @autoclosure () -> String) { session.trace(message()) }

    /// The model of a child forked from this process at its fork event: the
    /// same pages armed (the child's copy of the address space has the same
    /// protections), every tracked page dirty (its first sweep reports all of
    /// its memory, which is new to PageWatch), the forking thread's state.
    func forkedCopy(pid child: Int32, thread: TrackedThread) -> ProcessTracker {
        let copy = ProcessTracker(session: session, pid: child, parent: pid)
        copy.injector = injector.forkedCopy()
        copy.memory = memory
        for region in memory.regions { copy.memory.markDirty(region.range) }
        copy.stackAnchors = stackAnchors
        copy.signalActions.onStack = signalActions.onStack
        copy.signalActions.segv = signalActions.segv
        copy.seccompForbidsUserfaultfd = seccompForbidsUserfaultfd
        UserfaultRanges.shared.forked(from: pid, child: child)
        let state = TrackedThread(tid: child)
        state.signals.altStack = thread.signals.altStack
        state.signals.altStackKnown = thread.signals.altStackKnown
        state.rseqKnown = thread.rseqKnown  // inherited registration, pinned in the copy
        state.exitWords.clearChildTid = thread.exitWords.newThreadClearTid
        copy.threads[child] = state
        return copy
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
        // The one look-up of the stopped thread; handlers take it.
        let thread = self.thread(tid)
        stopSignalInfo = nil
        thread.syscall.callOutputs = nil
        let exitNext = thread.syscall.exitNext
        thread.syscall.exitNext = false
        if thread.trampoline.page != nil, try settleTrampoline(thread, at: event) { return }
        let lingering = thread.interrupt.mayLinger
        thread.interrupt.mayLinger = false
        if thread.interrupt.pending || lingering {
            switch event {
            case .interruptStop, .syscallStop:
                try undoInterruptEINTR(thread, onlyWithoutSignal: !thread.interrupt.pending)
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
            if thread.interrupt.pending { thread.interrupt.mayLinger = true }
            thread.interrupt.pending = false
        }
        if thread.preexisting {
            switch event {
            case .interruptStop, .groupStop:
                break  // its first stop, below
            case .exited, .killed, .event(_, .exit):
                thread.preexisting = false
                session.firstStopSeen(tid)  // gone before it: nothing to learn
            default:
                // Any other trap dropped its pending interrupt (ptrace_stop
                // clears JOBCTL_TRAP_STOP): ask again, the first sweep waits for it.
                if (try? Ptrace.interrupt(tid)) != nil { thread.interrupt.pending = true }
            }
        }
        switch event {
        case .exited(_, let code):
            if tid == pid && end == nil { finish(.exited(code: code)) } else { threadGone(tid) }
        case .killed(_, let sig, _):
            if tid == pid && end == nil { finish(.killed(signal: sig)) } else { threadGone(tid) }
        case .event(_, .exit):
            thread.exiting = true
            keepExitWordsWritable(thread)
            // The last thread, or the one that called exit_group: the others
            // were killed before its exit event, and a thread killed in a
            // ptrace stop may end with no exit event of its own (seen with Go).
            // Memory is still readable, no code of the program runs again.
            let lastToRun = thread.endsTheGroup || threads.values.allSatisfy { $0.exiting || $0.vforkChild }
            if lastToRun && !finalSweepDone && !thread.vforkChild {
                try finalSweep(reason: .exit)
            }
            try session.proceed(tid)
        case .event(_, .clone):
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            // The new thread runs at once: it may have ended already (never
            // to stop again: a state for it would wait forever).
            if endedBeforeItsCloneEvent.remove(child) == nil, threads[child] == nil {
                threads[child] = TrackedThread(tid: child)
            }
            threads[child]?.awaitsCloneEvent = false
            let clearTid = thread.exitWords.newThreadClearTid
            threads[child]?.exitWords.clearChildTid = clearTid
            thread.exitWords.newThreadClearTid = nil
            thread.syscall.completing = Int64(child)
            try sweepIfPending(in: thread)
            try resume(thread)
        case .event(_, .exec) where thread.vforkChild:
            // The vfork child has its own address space now: no longer ours.
            threads[tid] = nil
            try session.vforkChildExeced(tid, parent: self)
        case .event(_, .exec):
            thread.syscall.completing = 0
            try startImage(tid: tid)
            try resume(self.thread(tid))  // the leader's state now (`startImage`)
        case .event(_, .seccomp):
            try handleSyscallEntry(thread)
        case .event(_, let kind) where kind == .fork || kind == .vfork:
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            thread.syscall.completing = Int64(child)
            try session.forked(child, kind: kind, parent: self, thread: thread)
            // Not after vfork: the parent runs no code of ours until the child
            // execs or exits, and the child waits for us.
            if kind == .fork { try sweepIfPending(in: thread) }
            try resume(thread)
        case .event:
            try sweepIfPending(in: thread)
            try resume(thread)
        case .interruptStop:
            if Tracker.debug, let r = try? Arch.readRegisters(tid: tid) {
                trace(
                    "  at \(Arch.instructionPointer(r)) syscall \(Arch.syscallNumber(r)) result \(Arch.syscallResult(r))"
                )
            }
            thread.interrupt.pending = false
            thread.inGroupStop = false
            try learnRseq(thread)
            if thread.preexisting { try firstAttachStop(thread) }
            if thread.sweepSignalTaken {
                thread.sweepSignalTaken = false
                return try waitForSignalSweep(thread)
            }
            try sweepIfPending(in: thread)
            try resume(thread)
        case .groupStop:
            // Stay stopped as without the tool until SIGCONT.
            thread.inGroupStop = true
            thread.interrupt.pending = false
            if thread.preexisting {
                // Attached while stopped: learn what can be learned without running code.
                try learnRseq(thread)
                learnClearTid(thread)
                thread.preexisting = false
                session.firstStopSeen(tid)
            }
            if session.detaching != nil {
                session.attachState?.parked.insert(tid)  // detached from here, it stays stopped
            } else {
                try Ptrace.listen(tid)
            }
        case .syscallStop:
            if let pending = thread.syscall.pendingExit {
                thread.syscall.pendingExit = nil
                try handleSyscallExit(thread, pending)
            } else if session.resumeMode == .syscallStops, !exitNext, case let info = try Ptrace.syscallInfo(tid),
                info.kind == .entry
            {
                // Attach mode: every syscall entry, as the seccomp stops of launch mode.
                try handleSyscallEntry(thread, info)
            } else {
                if Tracker.debug, let r = try? Arch.readRegisters(tid: tid) {
                    trace("  exit of \(Arch.syscallNumber(r)): \(Arch.syscallResult(r))")
                }
                // A syscall exit (attach mode) can serve a sweep like an interrupt stop.
                try sweepIfPending(in: thread)
                try resume(thread)
            }
        case .unknown:
            try resume(thread)
        case .signalDelivery(_, let sig):
            thread.inGroupStop = false
            try handleSignal(sig, thread)
        }
    }

    /// The largest signal frame the kernel builds here: AT_MINSIGSTKSZ from
    /// the auxiliary vector (xsave state + rt_sigframe), plus alignment slack.
    lazy var signalFrameSize: UInt64 = {
        let minimum = (try? ProcFS.auxiliaryValue(pid: liveThread(), key: 51)) ?? nil  // AT_MINSIGSTKSZ
        return max(minimum ?? 0, 4096) + 256
    }()

    /// Resumes a stopped thread, first delivering anything held for it.
    func resume(_ thread: TrackedThread, exit pending: PendingSyscallExit? = nil) throws {
        let tid = thread.tid
        // Kept for a thread parked for the detach: its injections there must
        // put back the call's result too (a clone's parent became its child).
        if session.detaching == nil || pending != nil { thread.syscall.completing = nil }
        var rewound = false
        let fromEntry = thread.syscall.atEntry
        thread.syscall.atEntry = false
        thread.syscall.entryRegisters = nil
        if thread.syscall.abandoned {
            // PageWatch ran code at this syscall entry, which abandoned the
            // call; the thread was given back rewound: it runs its syscall
            // instruction again and stops here again.
            thread.syscall.abandoned = false
            session.attachState?.resumingAbandonedCall()
            rewound = true
        }
        if let pending, !rewound {
            thread.syscall.pendingExit = pending
            try Ptrace.resumeToSyscallExit(tid)
            return
        }
        try absorbHeldFaults(thread)
        try leaveOwnFaultsToTheirInstructionWhileActionReset(thread)
        guard let next = thread.signals.held.first, session.detaching == nil else {
            // (Detaching: held signals are sent again after the detach.)
            if fromEntry, !rewound, session.detaching == nil, session.resumeMode == .syscallStops {
                thread.syscall.exitNext = true
            }
            try session.proceed(tid)
            return
        }
        // A signal that arrived during PageWatch's injections (a sweep's
        // re-arming among them) gets its frame's pages un-armed like any
        // other: a shell's SIGCHLD handler died by SIGSEGV here.
        if !thread.signals.altStackKnown, signalActions.onStack & (UInt64(1) << UInt64(next.signal - 1)) != 0 {
            try learnAltStack(thread)
        }
        let area = try signalFrameArea(next.signal, thread)
        let frame = armedPages(ofFrame: area)
        if !frame.isEmpty {
            let framer = attribution.writer("signal frame " + Signal.name(next.signal), tid: tid)
            for range in frame.ranges { try unarmRange(range, by: framer, thread) }
        }
        guard !thread.signals.held.isEmpty else { return try session.proceed(tid) }
        let first = thread.signals.held.removeFirst()
        trace("  delivering held \(Signal.name(first.signal)) to \(tid)")
        let rest = thread.signals.held
        thread.signals.held = []
        keepWritable(frame: area, thread)  // (`first` is `next`)
        try Ptrace.deliver(first, to: tid, mode: session.resumeMode)
        // Only one signal can ride on a resume; the rest are sent again (their
        // siginfo becomes SI_TKILL). In practice at most one arrives.
        session.sendHeldAgain(rest, pid: pid, tid: tid)
    }

    // MARK: - Threads kept waiting, and the end

    /// Threads kept at a stop (`StopWaiting`) go on once nothing holds them
    /// (after each stop the session handles): the sweep a thread stopped at
    /// the sweep signal waits for (in attach mode, one asked for before
    /// every thread was seen is the attach sweep, done meanwhile in another
    /// thread), then faults, then one memory call at a time.
    func serveWaiting() throws {
        guard threads.values.contains(where: { $0.waiting != nil }) else { return }
        for tid in threads.keys.sorted() {
            guard let thread = threads[tid], thread.waiting == .sweepSignal else { continue }
            if pendingSweep == nil {
                thread.waiting = nil
                try resume(thread)
            } else if session.allThreadsSeen, !memoryCallInFlight(besides: tid) {
                thread.waiting = nil
                try sweepIfPending(in: thread)
                try resume(thread)
            }
        }
        guard !memoryCallInFlight(besides: 0) else { return }
        for tid in threads.keys.sorted() {
            guard let thread = threads[tid], thread.waiting == .fault else { continue }
            thread.waiting = nil
            try handleSignal(Signal.SIGSEGV, thread)
        }
        if let tid = threads.keys.sorted().first(where: { threads[$0]?.waiting == .memoryCall }),
            let thread = threads[tid]
        {
            thread.waiting = nil
            try handleSyscallEntry(thread)
        }
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
