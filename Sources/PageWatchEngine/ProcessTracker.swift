import Glibc
import PageWatchAddressSpace
import PageWatchAttribution
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
    init(session: Tracker, pid: Int32, parent: Int32?) {
        self.session = session
        self.pid = pid
        self.parent = parent
        injector = ProcessInjector(session: session)
        attribution = WriterAttribution(session: session, pid: pid)
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
        copy.onStackSignals = onStackSignals
        copy.segvAction = segvAction
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
        if thread.trampoline.page != nil, try settleTrampoline(thread, at: event) { return }
        let lingering = thread.interrupt.mayLinger
        thread.interrupt.mayLinger = false
        if thread.interrupt.pending || lingering {
            switch event {
            case .interruptStop, .syscallStop: try undoInterruptEINTR(thread, onlyWithoutSignal: !thread.interrupt.pending)
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
            if threads.values.allSatisfy({ $0.exiting || $0.vforkChild }) && !finalSweepDone && !thread.vforkChild {
                // The last thread: memory is still readable, nothing can run.
                try finalSweep(reason: .exit)
            }
            try session.proceed(tid)
        case .event(_, .clone):
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            // The new thread runs at once: it may have ended already (never
            // to stop again: a state for it would wait forever).
            if endedBeforeItsCloneEvent.remove(child) == nil, threads[child] == nil { threads[child] = TrackedThread(tid: child) }
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
                trace("  at \(Arch.instructionPointer(r)) syscall \(Arch.syscallNumber(r)) result \(Arch.syscallResult(r))")
            }
            thread.interrupt.pending = false
            thread.inGroupStop = false
            try learnRseq(thread)
            if thread.preexisting { try firstAttachStop(thread) }
            try sweepIfPending(in: thread)
            try resume(thread)
        case .groupStop:
            // Stay stopped as without the tool until SIGCONT (hazard 18).
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
                session.parked.insert(tid)  // detached from here, it stays stopped
            } else {
                try Ptrace.listen(tid)
            }
        case .syscallStop:
            if let pending = thread.syscall.pendingExit {
                thread.syscall.pendingExit = nil
                try handleSyscallExit(thread, pending)
            } else if session.resumeMode == .syscallStops, try Ptrace.syscallStopKind(tid) == .entry {
                // Attach mode: every syscall entry, as the seccomp stops of launch mode.
                try handleSyscallEntry(thread)
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

    func handleSignal(_ sig: Int32, _ thread: TrackedThread) throws {
        let tid = thread.tid
        if sig == Signal.SIGSEGV {
            let info = stopSignalInfo?.tid == tid ? stopSignalInfo!.info : try Ptrace.signalInfo(tid)
            stopSignalInfo = nil
            if try handleSegv(info, thread) { return }
        }
        if sig == config.sweepSignal {
            try learnRseq(thread)
            if !finalSweepDone && !givesUpAtSweep { pendingSweep = .signal }
            try sweepIfPending(in: thread)
            if pendingSweep != nil {
                thread.waiting = .sweepSignal  // it must wait (sweepIfPending)
                return
            }
            try resume(thread)  // swallowed
            return
        }
        // A handler on an alternate stack the thread set before an attach:
        // where is it? (Asked with the signal held, below.)
        let unknownStack = !thread.signals.altStackKnown && onStackSignals & (UInt64(1) << UInt64(sig - 1)) != 0
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

    /// Hazard 2: to run a handler the kernel writes the signal frame below
    /// the stack pointer (past the red zone), or at the top of the thread's
    /// sigaltstack for an SA_ONSTACK handler; on an armed page that write
    /// fails and the kernel kills the program. Returns the pages the frame
    /// may cover when `sig` has a handler.
    func signalFrameArea(_ sig: Int32, _ thread: TrackedThread) throws -> AddressRange? {
        let tid = thread.tid
        guard memory.trackedPageCount > 0, try caughtSignals() & (1 << UInt64(sig - 1)) != 0 else { return nil }
        var sp = Arch.stackPointer(try Arch.readRegisters(tid: tid))
        var frameBytes = Arch.redZone + signalFrameSize
        if onStackSignals & (1 << UInt64(sig - 1)) != 0, let alt = thread.signals.altStack, !alt.contains(sp) {
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
    func keepWritable(frame area: AddressRange?, _ thread: TrackedThread) {
        guard let area else { return }
        var pages = thread.syscall.callOutputs ?? PageSet()
        pages.insert(area)
        thread.syscall.callOutputs = pages
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
    func unarmRange(_ range: AddressRange, by writer: Writer, _ thread: TrackedThread) throws {
        let tid = thread.tid
        var page = range.start
        while page < range.end {
            if case .armed(let protection) = memory.state(of: page) {
                noteWrite(page, by: writer, fault: false, tid: tid)
                try unarm(page, protection, thread)
            }
            page = page + Page.size
        }
    }

    /// Returns true when the SIGSEGV was PageWatch's and has been handled.
    func handleSegv(_ info: SignalInfo, _ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        if info.code == SignalInfo.SI_KERNEL {
            // The kernel could not update the thread's rseq area (hazard 3).
            return try rescueRseq(thread)
        }
        guard info.code == SignalInfo.SEGV_ACCERR else { return false }
        if memoryCallInFlight(besides: tid) {
            thread.waiting = .fault
            return true
        }
        let page = Page.floor(info.faultAddress)
        if pendingSweep != nil, memory.state(of: page) != .untracked { try sweepAtFault(thread) }
        trace("  fault at \(info.faultAddress): \(memory.state(of: page))")
        switch memory.state(of: page) {
        case .untracked:
            return false
        case .armed(let protection):
            noteWrite(page, by: attribution.writer(nil, tid: tid), fault: true, tid: tid)
            thread.suppressedFault.page = nil
            faultsThisInterval += 1
            totalFaults += 1
            try restoreSegvActionIfReset(thread)
            if try unarmThroughTrampoline(page, protection, thread) { return true }
            try unarm(page, protection, thread)
            try resume(thread)
            return true
        case .writable(let protection):
            // Another thread got there first (hazard 11): just retry the write.
            // At the same page again, make sure the kernel has the program's
            // protection there; a third time the fault is not ours (hazard 14).
            guard protection.contains(.write) else { return false }
            let repeats: Int
            if thread.suppressedFault.page == page { repeats = thread.suppressedFault.repeats + 1 } else { repeats = 0 }
            thread.suppressedFault.page = page
            thread.suppressedFault.repeats = repeats
            if repeats >= 2 {
                thread.suppressedFault.page = nil
                return false
            }
            try restoreSegvActionIfReset(thread)
            if repeats == 1 {
                try injector.protect(AddressRange(start: page, end: page + Page.size), protection, thread)
            }
            attribution.ledger.countFault(at: page)
            faultsThisInterval += 1
            totalFaults += 1
            try resume(thread)
            return true
        }
    }

    /// Makes one armed page writable again and marks it dirty.
    func unarm(_ page: RemoteAddress, _ protection: Protection, _ thread: TrackedThread) throws {
        let range = AddressRange(start: page, end: page + Page.size)
        do {
            try injector.protect(range, protection, thread)
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
                for change in plan { try injector.protect(change.range, change.protection, thread) }
                memory.markRegionArmedKeepingDirty(containing: page)
                try injector.protect(range, protection, thread)
                memory.markWritten(page)
                return
            } catch TraceError.remoteSyscall(_, let errno, _, _) where errno == .ENOMEM {
                // Still no room: fall through to the last resort.
            }
        }
        try unarmRegion(containing: page, thread)
    }

    /// The last resort at vm.max_map_count: the region's program protection
    /// everywhere (one VMA again), every page dirty until the next sweep.
    func unarmRegion(containing page: RemoteAddress, _ thread: TrackedThread) throws {
        if let whole = memory.markRegionWritten(containing: page) {
            try injector.protect(whole.range, whole.protection, thread)
        }
    }

    /// Every region with armed pages gets the program's protection back
    /// (detach, untracked), in one injection.
    func giveBackProtections(_ thread: TrackedThread) throws {
        let tid = thread.tid
        let changes = armedRegions()
        for (change, result) in zip(changes, try injector.protectAll(changes, thread)) where result != 0 {
            throw ProcessInjector.mprotectFailed(result, at: change.range.start, tid: tid)
        }
    }

    /// Resumes a stopped thread, first delivering anything held for it.
    func resume(_ thread: TrackedThread, exit pending: PendingSyscallExit? = nil) throws {
        let tid = thread.tid
        // Kept for a thread parked for the detach: its injections there must
        // put back the call's result too (a clone's parent became its child).
        if session.detaching == nil || pending != nil { thread.syscall.completing = nil }
        var rewound = false
        if let entry = thread.syscall.entryRegisters {
            thread.syscall.entryRegisters = nil
            if thread.syscall.injectedAtEntry {
                // PageWatch ran code at this syscall entry, which abandoned the
                // call: run the syscall instruction again (it stops here again).
                thread.syscall.injectedAtEntry = false
                try Arch.writeRegisters(Arch.rewindingSyscall(entry), tid: tid)
                rewound = true
            }
        }
        if let pending, !rewound {
            thread.syscall.pendingExit = pending
            try Ptrace.resumeToSyscallExit(tid)
            return
        }
        try absorbHeldFaults(thread)
        guard let next = thread.signals.held.first, session.detaching == nil else {
            // (Detaching: held signals are sent again after the detach.)
            try session.proceed(tid)
            return
        }
        // A signal that arrived during PageWatch's injections (a sweep's
        // re-arming among them) gets its frame's pages un-armed like any
        // other (hazard 2): a shell's SIGCHLD handler died by SIGSEGV here.
        if !thread.signals.altStackKnown, onStackSignals & (UInt64(1) << UInt64(next.signal - 1)) != 0 {
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
    func absorbHeldFaults(_ thread: TrackedThread) throws {
        let tid = thread.tid
        var rounds = 0
        while rounds < 8,
              let i = thread.signals.held.firstIndex(where: { $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SEGV_ACCERR }) {
            rounds += 1
            let page = Page.floor(thread.signals.held[i].faultAddress)
            switch memory.state(of: page) {
            case .armed(let protection):
                thread.signals.held.remove(at: i)
                noteWrite(page, by: attribution.writer(nil, tid: tid), fault: true, tid: tid)
                try restoreSegvActionIfReset(thread)
                try unarm(page, protection, thread)
                faultsThisInterval += 1
                totalFaults += 1
            case .writable(let protection) where protection.contains(.write):
                thread.signals.held.remove(at: i)
                try restoreSegvActionIfReset(thread)
            default:
                return  // the program's own fault: delivered as it is
            }
        }
        if let i = thread.signals.held.firstIndex(where: { $0.signal == Signal.SIGSEGV && $0.code == SignalInfo.SI_KERNEL }),
           let area = try? Ptrace.rseqArea(tid), case .armed = memory.state(of: area.address) {
            thread.signals.held.remove(at: i)
            thread.rseqKnown = true
            try injector.pin(area.range.pageAligned, in: &memory, thread)
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
        let completing = threads[pid]?.syscall.completing ?? threads[tid]?.syscall.completing ?? 0
        let leader = threads[pid] ?? TrackedThread(tid: pid)
        threads = [pid: leader]
        leader.rseqKnown = false
        leader.syscall.completing = completing
        memory.reset()
        ioUring = IOUringState()  // io_uring fds are always close-on-exec
        UserfaultRanges.shared.forget(pid: pid)  // a new address space
        stackAnchors = []
        faultsThisInterval = 0
        attribution.startImage()
        try injector.place(in: leader, completing: completing, journal: guardianJournal)
        injector.shareSlotData(leader, forkChild: parent != nil)
        try learnSignalActions(leader)  // exec reset the handlers; SIG_IGN stays
        if sweeps > 0 || totalFaults > 0 {
            let path = ProcFS.executable(of: pid) ?? (parent == nil ? config.command[0] : "")
            emit(.exec(pid: pid, path: path, timeNs: wallClockNs()))
        }
        session.checkExecPrivilege(pid: pid)
    }

    /// Looks up the thread's rseq area once it has one and pins it (hazard 3).
    func learnRseq(_ thread: TrackedThread) throws {
        let tid = thread.tid
        guard !thread.rseqKnown else { return }
        guard let area = try? Ptrace.rseqArea(tid) else { return }
        thread.rseqKnown = true
        try injector.pin(area.range.pageAligned, in: &memory, thread)
    }

    /// A SIGSEGV the kernel forced because it could not write the rseq area:
    /// pin the area and let the thread go on, as it would have without us.
    func rescueRseq(_ thread: TrackedThread) throws -> Bool {
        let tid = thread.tid
        guard let area = try? Ptrace.rseqArea(tid) else { return false }
        guard case .armed = memory.state(of: area.address) else { return false }
        thread.rseqKnown = true
        try restoreSegvActionIfReset(thread)
        try injector.pin(area.range.pageAligned, in: &memory, thread)
        try resume(thread)
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
    func undoInterruptEINTR(_ thread: TrackedThread, onlyWithoutSignal: Bool = false) throws {
        let tid = thread.tid
        let regs = try Arch.readRegisters(tid: tid)
        guard Arch.syscallResult(regs) == -Int64(Errno.EINTR.rawValue),
              Self.endedByStops.contains(Arch.syscallNumber(regs)) else { return }
        if onlyWithoutSignal, (try? ProcFS.unblockedPendingSignals(of: tid, shared: true)) != 0 { return }
        trace("  interrupt ended syscall \(Arch.syscallNumber(regs)) with EINTR: rewound")
        try Arch.writeRegisters(Arch.rewindingSyscall(regs), tid: tid)
    }

    static let endedByStops = Set(Syscall.failWithEINTRWhenStopped.compactMap { Arch.syscallNumbers[$0] })

    /// A thread to name in /proc paths: the main thread may have exited (pthread_exit).
    func liveThread() -> Int32 {
        if let main = threads[pid], !main.exiting { return pid }
        for (tid, state) in threads where !state.exiting { return tid }
        return threads.keys.first ?? pid
    }

    func threadGone(_ tid: Int32) {
        attribution.unwinder?.threadGone(tid: tid)
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
        if excluded == nil, threads.values.contains(where: \.interrupt.pending) { return true }
        // Not a thread PageWatch keeps at a stop (`waiting`): it stops nowhere else until let go.
        let candidates = threads.keys.sorted().filter { t in
            let s = threads[t]!
            return t != excluded && !s.exiting && !s.inGroupStop && s.waiting == nil
        }
        for t in candidates where safeToInterrupt(t) {
            if (try? Ptrace.interrupt(t)) != nil {
                threads[t]?.interrupt.pending = true
                threads[t]?.interrupt.sentNs = monotonicNs()
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
            guard let written = Arch.memoryWrittenOnInterruption(number: number, arguments: arguments) else {
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

    func sweepIfPending(in thread: TrackedThread) throws {
        let tid = thread.tid
        guard let reason = pendingSweep, session.awaitingFirstStop.isEmpty,
              !memoryCallInFlight(besides: tid) else { return }
        try sweep(reason: reason, in: thread)
    }

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
            } else if session.awaitingFirstStop.isEmpty, !memoryCallInFlight(besides: tid) {
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
        if let tid = threads.keys.sorted().first(where: { threads[$0]?.waiting == .memoryCall }), let thread = threads[tid] {
            thread.waiting = nil
            try handleSyscallEntry(thread)
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
            guard other != tid, let page = state.trampoline.page,
                  range.map({ $0.pageAligned.contains(page) }) ?? true, case .writable = memory.state(of: page),
                  !slotCallSucceeded(state) else { return nil }
            return page
        }
    }

    /// Whether `tid`'s slot has run its `mprotect`, successfully.
    func slotCallSucceeded(_ thread: TrackedThread) -> Bool {
        let tid = thread.tid
        guard let slot = thread.trampoline.slot, let slots = injector.slots else { return false }
        return (try? slots.result(slot, tid: tid)) == 0
    }

    /// Whether pages may be armed now. Not before the first sweep of an
    /// attach (every thread seen, its rseq area pinned; the gadget in place):
    /// until then the program's memory calls run as they are and new pages
    /// are left for that sweep, which arms them.
    var armsNow: Bool { injector.remote != nil && session.awaitingFirstStop.isEmpty }

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
            switch state.syscall.pendingExit {
            case .memory?, .segvAction?: return true
            default: return false
            }
        }
    }

    /// Reports and re-arms. Re-protection comes before the dirty bits are
    /// cleared, so a write racing with the sweep lands in the next interval
    /// (hazard 19): pages written while we work are unarmed, hence dirty, and
    /// writes after their re-arm fault and are handled after this sweep.
    func sweep(reason: SweepReason, in thread: TrackedThread) throws {
        let tid = thread.tid
        if reason == .attach, try stopTrackingForIOUringBeforeAttach(thread) { return }
        if givesUpAtSweep, let why = session.givingUp { return try stopTracking(because: why, thread) }
        pendingSweep = nil
        // Re-armed pages may fault again legitimately: forget the race markers (hazards 11, 14).
        for t in threads.values { t.suppressedFault.page = nil }
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
        for (change, result) in zip(changes, try injector.protectAll(changes, thread)) {
            if result == 0 {
                memory.markArmed(change.range)
            } else if result == -Int64(Errno.ENOMEM.rawValue) {
                // vm.max_map_count (hazard 12), possibly applied in part: give
                // the region its program protection everywhere; its pages stay
                // dirty and are reported again next sweep (never missed).
                try unarmRegion(containing: change.range.start, thread)
            } else {
                throw ProcessInjector.mprotectFailed(result, at: change.range.start, tid: tid)
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
            if other != tid { for r in state.syscall.callOutputs?.ranges ?? [] { busy.insert(r) } }
            if !state.exitWords.kept.isEmpty {
                if exitWritesDone(state) {
                    state.exitWords.kept = []  // written: re-armed like any other page from now on
                } else {
                    for r in state.exitWords.kept { busy.insert(r.pageAligned) }
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
        let sites = attribution.sites(of: dirty, pinned: memory.pinned, reportedAgain: reportedAgain)
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
        let programs = maps.filter { m in injector.remote.map { !$0.scratch.contains(m.range.start) } ?? true }
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
        attribution.mapsRead(maps)
    }

    /// Gives up tracking this process without changing it: a last sweep
    /// (reason `untracked`) reports what was written, every armed page gets
    /// the program's protection back, and an `untracked` record says why.
    func stopTracking(because reason: String, _ thread: TrackedThread) throws {
        try settleAllTrampolines()
        try? refreshMaps()
        try giveBackProtections(thread)
        try absorbHeldFaults(thread)
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
