import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// `pagewatch attach`: take a running process, track it, and
/// leave it as it was found.
extension Tracker {
    /// What asks PageWatch to detach: Ctrl-C, kill, a closed terminal.
    static let detachSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    /// No EXITKILL (PageWatch dying must not kill the program)
    /// and no seccomp filter (it would outlive the detach).
    static let attachOptions: TraceOptions = [
        .traceSysGood, .traceClone, .traceExec, .traceExit,
        .traceFork, .traceVfork,
    ]

    /// How an attach ended.
    public enum AttachEnd: Sendable, Equatable {
        /// PageWatch let go; the program runs on.
        case detached
        /// The program ended while PageWatch was attached.
        case programEnded(ProgramEnd)
    }

    /// Attaches to `pid`, tracks it until a detach is asked for (signal,
    /// `durationNs`, `maxSweeps`) or the program ends, and detaches.
    public func attach(pid: Int32) throws -> AttachEnd {
        try Attacher.check(pid)
        resumeMode = .syscallStops
        let attach = AttachState()
        attachState = attach
        for s in Self.detachSignals {
            setSignalBlocked(s, true)
            try installFlagHandler(s)
        }
        try startGuardian(for: pid)
        let tids: [Int32]
        do {
            tids = try Attacher.seizeAll(pid, options: Self.attachOptions)
        } catch {
            releaseGuardian()
            throw error
        }
        main = ProcessTracker(session: self, pid: pid, parent: nil)
        processes[pid] = main
        // Ranges the program registered with its own userfaultfd before: never read there.
        UserfaultRanges.shared.learn(pid: pid)
        let polling = holdIdlePolling()
        defer { withExtendedLifetime(polling) {} }
        for tid in tids {
            let state = TrackedThread(tid: tid)
            state.preexisting = true
            state.signals.altStackKnown = false  // maybe set before the attach
            state.interrupt.pending = true
            main.threads[tid] = state
            // Each thread stops once so its rseq area and tid word can be
            // learned; the first sweep waits for all of them.
            do { try Ptrace.interrupt(tid) } catch TraceError.call(_, let e, _, _) where e == .ESRCH {
                main.threads[tid] = nil
            }
        }
        attach.awaitingFirstStop = Set(main.threads.keys)
        let selected = main.selectedPagesNow()
        emit(
            .start(
                pid: pid, pageSize: Page.size, command: config.command,
                tracked: config.selection.specs.map(\.description), timeNs: wallClockNs(),
                selectedPages: selected, schema: config.schema, mappings: main.namedSelectionNow(),
                backends: main.backendNames))
        main.backendsSaid = main.backendNames
        warnIfNothingSelected(selected)
        emit(.attach(pid: pid, threads: main.threads.count, timeNs: wallClockNs()))
        started = true
        if config.intervalNs > 0 || config.durationNs != nil {
            let t = try SweepTimer(intervalNs: config.intervalNs, durationNs: config.durationNs)
            timer = t
        }
        defer { timer?.stop() }
        try eventLoop()
        releaseGuardian()
        if let end = main.end {
            emit(.end(pid: pid, end: end, sweeps: main.sweeps, faults: main.totalFaults, timeNs: main.endTimeNs))
            return .programEnded(end)
        }
        emit(.detach(pid: pid, sweeps: main.sweeps, faults: main.totalFaults, timeNs: wallClockNs()))
        return .detached
    }

    /// A pre-existing thread's first stop was handled; once every one has
    /// been seen, the first sweep arms the selection.
    func firstStopSeen(_ tid: Int32) {
        guard let attach = attachState, attach.awaitingFirstStop.remove(tid) != nil, attach.awaitingFirstStop.isEmpty
        else { return }
        // Whatever was asked for meanwhile (a sweep signal) is this sweep:
        // nothing was tracked before it.
        if !main.finalSweepDone { main.pendingSweep = .attach }
    }

}

extension ProcessTracker {
    /// The detach of this process: report, restore, remove the gadget, from
    /// a parked thread that can run code (not exiting; best not at a
    /// syscall entry, where running code abandons the call: it is rewound).
    func detachSweep() throws {
        try settleAllTrampolines()
        try? refreshMaps()
        // No thread needed: the scan reads from outside. Before the content check, which looks at its result.
        scanWriteProtected(tid: liveThread(), reprotect: false)
        // Write faults pending at the parking stops (taken before anything
        // runs: one would otherwise kill its thread after the detach).
        for tid in threads.keys.sorted()
        where session.attachState?.parkedSignals[tid] == nil
            && !(threads[tid]?.inGroupStop ?? true) && !(threads[tid]?.exiting ?? true)
        {
            if let taken = try? Ptrace.takePendingFault(tid) { threads[tid]?.signals.held += taken }
        }
        let candidates = threads.keys.filter { !(threads[$0]?.exiting ?? true) }.map { tid in
            (tid, (try? Ptrace.syscallStopKind(tid)) ?? .none, threads[tid]?.inGroupStop ?? false)
        }.sorted { a, b in
            func rank(_ c: (Int32, SyscallStopKind, Bool)) -> Int {
                (c.2 ? 4 : 0) + (c.1 == .entry ? 2 : c.1 == .exit ? 1 : 0)
            }
            return (rank(a), a.0) < (rank(b), b.0)
        }
        if let (tid, kind, _) = candidates.first, let thread = threads[tid] {
            // Parked at a syscall entry: the injections below abandon the
            // call and give the thread back rewound, to make it after the detach.
            if kind == .entry { thread.syscall.atEntry = true }
            checkContents(tid: tid)  // every thread parked: nothing moves
            try giveBackProtections(thread)
            // A write fault pending when the thread was parked arrives during
            // those calls: PageWatch's, its page reported; the write itself
            // runs again after the detach, on a page that is writable now.
            for held in threads.keys.sorted() { if let other = threads[held] { try absorbHeldFaults(other) } }
            try restoreSegvActionIfUnchecked(thread)
            try injector.removeScratch(thread)
        }
        let dirty = dirtyPagesOfBothBackends()
        finalSweepDone = true
        emitSweep(reason: .detach, dirty: dirty)
        releaseWriteProtection()
        injector.remote = nil
        memory.reset()
        presumption.reset()
        publishForGuardian()  // nothing left for the guardian to restore
    }

    /// The exit words of a thread whose clone PageWatch did not see: glibc and
    /// musl keep its `clear_child_tid` word (`&pthread->tid`) in the thread
    /// control block at the thread pointer; the first 4-byte-aligned word
    /// there holding the thread's tid is taken for it.
    func learnClearTid(_ thread: TrackedThread) {
        let tid = thread.tid
        guard thread.exitWords.clearChildTid == nil, let regs = try? Arch.readRegisters(tid: tid) else { return }
        let tcb = Arch.threadPointer(regs)
        guard tcb.value != 0, let raw = try? Ptrace.readMemory(tid, tcb, count: 2048), raw.count == 2048 else { return }
        for offset in stride(from: 16, to: raw.count, by: 4)
        where littleEndian(raw, at: offset, size: 4) == UInt64(UInt32(bitPattern: tid)) {
            thread.exitWords.clearChildTid = tcb + UInt64(offset)
            return
        }
    }

    /// The first stop of a thread `pagewatch attach` seized: place the
    /// gadget (once), learn its rseq area and tid word.
    func firstAttachStop(_ thread: TrackedThread) throws {
        let tid = thread.tid
        if injector.remote == nil {
            try injector.place(in: thread, journal: guardianJournal)
            publishForGuardian()
            try learnSignalActions(thread)
        }
        try learnAltStack(thread)
        learnClearTid(thread)
        thread.preexisting = false
        session.firstStopSeen(tid)
    }
}
