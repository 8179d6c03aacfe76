import Glibc
import PageWatchAddressSpace
import PageWatchAttribution
import PageWatchImage
import PageWatchLog
import PageWatchPtrace

/// What `pagewatch run` was asked to do.
public struct TrackerConfiguration: Sendable {
    public var command: [String]
    public var selection: Selection
    /// Nanoseconds between periodic sweeps; 0 = none.
    public var intervalNs: UInt64
    /// Deliveries of this signal trigger a sweep and are swallowed.
    public var sweepSignal: Int32?
    /// Track the processes the program forks too, each with its own sweeps.
    public var followForks: Bool
    /// Frames recorded per writer; 0 turns attribution off.
    public var stackDepth: Int
    /// `attach`: detach by itself after this long (nanoseconds) ...
    public var durationNs: UInt64?
    /// ... or after this many sweeps of the program.
    public var maxSweeps: Int?
    /// How long to poll for the next stop before sleeping in waitpid
    /// (`Wait.spinNs`; 0: never poll).
    public var spinNs: UInt64 = Wait.spinNs
    /// Keep idle CPUs polling while tracing (`CPUIdlePolling`), where permitted.
    public var idlePolling = true
    /// `run`: the program's standard output (a descriptor of this process,
    /// -1: inherited), and whether it starts with no signal blocked whatever
    /// the calling thread blocks (a library caller on a worker thread).
    public var standardOutput: Int32 = -1
    public var emptySignalMask = false
    /// `--verify-contents`: keep a copy of every armed page and report the
    /// pages whose contents changed with no write reported (`missed` records).
    public var verifyContents = false
    /// When pages rewritten at every sweep may be left writable and
    /// reported without a fault (`WritePresumption`).
    public var presume = PresumeMode.auto
    /// With attribution off, new memory (an `mmap`, or untracked pages an
    /// `mprotect` makes writable) stays writable until the next sweep, which
    /// reports it entirely either way, instead of being armed at once: its
    /// first writes cost no fault. Off for PageWatchKit, whose write events
    /// are each page's first write.
    public var newMemoryWaitsForTheSweep = true
    /// The log's schema: `pagewatch/1` keeps every page new to PageWatch in
    /// `ranges` (no pagemap reads); `pagewatch/2` sorts out those that hold
    /// nothing of the process's own (`UnseenPages`).
    public var schema = LogSchema.current
    /// `--backend`: what tracks writes to private anonymous memory
    /// (`WriteTrackingBackend`). PageWatchKit keeps ptrace: its write
    /// events are each page's first write, which only ptrace sees.
    public var backend = WriteTrackingBackend.ptrace
    /// `--dump DIR`: each sweep copies its pages into a memory image there
    /// (`PageWatchImage`): sweep 1 a full image, later sweeps increments.
    public var dumpDirectory: String?

    /// Whether new memory waits for the next sweep to be armed (see above).
    public var newMemoryArmedAtSweep: Bool { stackDepth == 0 && newMemoryWaitsForTheSweep }

    public init(
        command: [String], selection: Selection, intervalNs: UInt64, sweepSignal: Int32?,
        followForks: Bool = false, stackDepth: Int = 16
    ) {
        self.stackDepth = stackDepth
        self.command = command
        self.selection = selection
        self.intervalNs = intervalNs
        self.sweepSignal = sweepSignal
        self.followForks = followForks
    }
}

/// The tracking session of `pagewatch run`: launches the program, waits for
/// every stop of every traced task and routes it to the `ProcessTracker` of
/// its process, or handles it here for the descendants PageWatch keeps traced
/// but does not track. Everything runs on the calling thread (the kernel ties
/// a tracee to it).
public final class Tracker {
    let config: TrackerConfiguration
    let emit: (LogRecord) -> Void
    /// Called with each page write as it is recorded, on this thread, the
    /// writer stopped (PageWatchKit). Its frames are symbolized at the write
    /// only when this is set: nil (the CLI) keeps the fault path unchanged.
    public var writeObserver: ((PageWrite) -> Void)?
    /// Called with each warning (one line, no prefix): something the user
    /// must know although nothing failed (`Tracker+Warnings`).
    public var onWarning: ((String) -> Void)?
    /// The files whose lost privileges were warned about, and whether the
    /// selection was (at most once each).
    var warnedPrivilegedImages: Set<String> = []
    var warnedAboutSelection = false
    /// The program's own ptrace use was explained (`noteOwnPtrace`, once).
    var warnedAboutOwnPtrace = false

    /// The program.
    var main: ProcessTracker!
    /// Tracked processes by pid: the program and, with `--follow-forks`, its
    /// descendants until they end.
    var processes: [Int32: ProcessTracker] = [:]
    var timer: SweepTimer?
    /// Descendant processes that are not tracked but must stay traced for
    /// their whole life (the seccomp filter they inherited needs a tracer),
    /// by tid.
    var untracked: Set<Int32> = []
    /// fork/vfork children by pid, from their parent's event until their first stop.
    var newChildren: [Int32: (kind: PtraceEvent, parent: ProcessTracker)] = [:]
    /// Followed fork children, modelled at their fork event, until their first stop.
    var followedChildren: [Int32: ProcessTracker] = [:]
    /// For each fork child not followed: the regions armed in the parent at
    /// its fork event, when both address spaces were the same (the parent may
    /// change its own before the child's first stop is handled), and the
    /// parent's gadget, which the child has too.
    var armedAtFork: [Int32: (injector: RemoteSyscall?, regions: [ProtectionChange])] = [:]
    /// New tasks whose first stop came before their parent's event.
    var unclassified: Set<Int32> = []
    /// Names writers' instruction pointers at sweeps, cached across processes.
    let symbolizer = Symbolizer()
    /// The ELF files the processes' unwinders parsed, shared across forks and execs.
    let unwindImages = UnwindImageCache()
    /// The program runs and the start record is out.
    public internal(set) var started = false
    /// `PTRACE_CONT` in launch mode (the seccomp filter picks the syscalls),
    /// `PTRACE_SYSCALL` in attach mode (no filter can be used there:
    /// it would outlive the detach).
    var resumeMode: ResumeMode = .continuing
    /// `pagewatch attach` only: the guardian, the first stops, the detach.
    var attachState: AttachState?
    /// Attach mode: why PageWatch is detaching, once it is; every thread is
    /// then parked at its next stop instead of resumed.
    var detaching: SweepReason? { attachState?.detaching }
    /// Every thread has had its first stop (attach mode; always in launch
    /// mode): nothing is armed before.
    var allThreadsSeen: Bool { attachState?.awaitingFirstStop.isEmpty ?? true }
    /// Why tracking is being given up (`giveUpTracking`), once it is.
    var givingUp: String?
    /// `--verify-contents`: pages found changed with no write reported, in every process.
    public internal(set) var missedPages = 0
    /// The memory image's first write error (`--dump`): tracking stopped there.
    public internal(set) var dumpFailure: ImageError?

    public init(configuration: TrackerConfiguration, emit: @escaping (LogRecord) -> Void) {
        config = configuration
        self.emit = emit
        Wait.spinNs = configuration.spinNs  // process-wide: PageWatch traces from one thread
    }

    static let options: TraceOptions = [
        .exitKill, .traceSysGood, .traceClone, .traceExec, .traceExit,
        .traceSeccomp, .traceFork, .traceVfork,
    ]

    /// Runs the program to its end. Throws when it cannot be started or traced.
    public func run() throws -> ProgramEnd {
        let pid = try Launcher.launch(
            config.command, options: Self.options, standardOutput: config.standardOutput,
            emptySignalMask: config.emptySignalMask,
            seccompFilter: ProcessTracker.interceptionFilter())
        main = ProcessTracker(session: self, pid: pid, parent: nil)
        processes[pid] = main
        main.threads[pid] = TrackedThread(tid: pid)
        let polling = holdIdlePolling()
        defer { withExtendedLifetime(polling) {} }
        try main.startImage(tid: pid)
        emit(
            .start(
                pid: pid, pageSize: Page.size, command: config.command,
                tracked: config.selection.specs.map(\.description), timeNs: wallClockNs(),
                selectedPages: main.selectedPagesNow(), schema: config.schema, mappings: main.namedSelectionNow(),
                backends: main.backendNames))
        main.backendsSaid = main.backendNames
        warnAboutFileSpecs()
        started = true
        // The program shares our terminal: Ctrl-C and Ctrl-\ are for it, and
        // PageWatch reports how it ended. (Ignored only now, after the fork,
        // so the program inherits the dispositions PageWatch was started with.)
        signal(SIGINT, SIG_IGN)
        signal(SIGQUIT, SIG_IGN)
        if config.intervalNs > 0 {
            let t = try SweepTimer(intervalNs: config.intervalNs)
            timer = t
        }
        defer { timer?.stop() }
        try main.resume(main.thread(pid))
        try eventLoop()
        let end = main.end!
        warnIfNothingWasEverSelected()
        emit(.end(pid: pid, end: end, sweeps: main.sweeps, faults: main.totalFaults, timeNs: main.endTimeNs))
        return end
    }

    /// Runs `body`; a thread of `owner` found dead in it (killed under us:
    /// SIGKILL, or a fatal signal to its process, at any step of the
    /// handling) is forgotten, its end event still to come. False then.
    @discardableResult
    func survivingThreadDeaths(in owner: ProcessTracker?, _ body: () throws -> Void) throws -> Bool {
        do {
            try body()
            return true
        } catch TraceError.traceeGone(let tid) {
            owner?.threadGone(tid)
        } catch TraceError.call(_, let errno, let tid, _) where errno == .ESRCH {
            owner?.threadGone(tid)
        }
        return false
    }

    /// The idle-polling request for the session (`TrackerConfiguration.idlePolling`),
    /// held by the caller until the program is let go.
    func holdIdlePolling() -> CPUIdlePolling? {
        guard config.idlePolling else { return nil }
        let request = CPUIdlePolling.request()
        trace(
            request == nil
                ? "idle CPUs not kept polling (/dev/cpu_dma_latency not writable)"
                : "idle CPUs kept polling (/dev/cpu_dma_latency = 0)")
        return request
    }

    // MARK: - The event loop

    func eventLoop() throws {
        // Until the program ends, and then until every descendant has: they
        // carry the seccomp filter and need their tracer.
        while processes.values.contains(where: { !$0.isDone }) || !untracked.isEmpty || !followedChildren.isEmpty {
            // Stops first: a thread waits for us at each one, and a pending
            // sweep is served at the next of them.
            var next = try Wait.poll(-1)
            // The clock, the deadline and the pending sweeps on every turn,
            // stops queued or not: a busy program always has a stop queued,
            // and checked only when none was, sweeps and the detach starved.
            try scheduleSweeps(stopQueued: next != nil)
            if let stop = detachCondition() { try startDetach(stop) }
            if detaching != nil { resendDetachInterrupts() }
            if next == nil, detaching != nil, try finishDetachIfParked() { return }
            if next == nil {
                clearWoken()
                setWakeupSignalsBlocked(false)
                next = try waitForNextStop()
                setWakeupSignalsBlocked(true)
            }
            guard let event = next else { continue }
            let owner = process(ofThread: event.tid)
            try survivingThreadDeaths(in: owner) { try handle(event, owner: owner) }
            // A death ends that thread's waiting: serving again goes on to the others.
            while let owner {
                let before = owner.threads.count
                if try survivingThreadDeaths(in: owner, { try owner.serveWaiting() }) || owner.threads.count == before {
                    break
                }
            }
            if let owner, owner !== main, owner.isDone { processEnded(owner) }
        }
    }

    static let timerSignalMask = signalMask(of: [SweepTimer.signal])
    static let detachSignalMask = signalMask(of: detachSignals)

    /// The signals that may interrupt `waitpid`: the timer's, and in attach
    /// mode those that ask PageWatch to detach. Unblocked only around it,
    /// in one `sigprocmask` (twice per blocking wait, on the way to each
    /// stop of a busy program).
    func setWakeupSignalsBlocked(_ blocked: Bool) {
        var mask: UInt64 = 0
        if timer != nil { mask |= Self.timerSignalMask }
        if resumeMode == .syscallStops { mask |= Self.detachSignalMask }
        if mask != 0 { setSignalsBlocked(mask, blocked) }
    }

    /// Resumes a thread of a tracked process as the mode wants; while
    /// detaching, parks it instead (keeping the signal it was stopped for).
    func proceed(_ tid: Int32, signal: Int32 = 0) throws {
        if let attach = attachState, attach.detaching != nil {
            if signal != 0 { attach.parkedSignals[tid] = try Ptrace.holdSignal(tid) }
            attach.parked.insert(tid)
            return
        }
        try Ptrace.resume(tid, signal: signal, mode: resumeMode)
    }

    /// PAGEWATCH_DEBUG=1: every stop and decision on stderr (for developers).
    static let debug = getenv("PAGEWATCH_DEBUG") != nil

    func trace(_ message: @autoclosure () -> String) {
        guard Self.debug else { return }
        let line = Array("pagewatch[debug] \(message())\n".utf8)
        _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }

    /// The tracked process a task belongs to (its leader's pid stays routed
    /// to it after the thread itself is forgotten, for the final exit).
    func process(ofThread tid: Int32) -> ProcessTracker? {
        if let p = processes[tid] { return p }
        return processes.values.first { $0.threads[tid] != nil }
    }

    func handle(_ event: StopEvent, owner: ProcessTracker?) throws {
        let tid = event.tid
        trace("\(event)")
        if untracked.contains(tid) { return try handleUntracked(event) }
        if let owner, owner.trackingStopped { return try handleLetGo(event, of: owner) }
        if let owner {
            // PageWatch's own work on the process, against which `auto` presumption weighs an interval.
            let started = monotonicNs()
            // (A sweep during the stop restarted the count: only the time after it counts.)
            defer { owner.busyNs &+= monotonicNs() &- max(started, owner.lastSweepNs) }
            return try owner.handle(event)
        }
        switch event {
        case .interruptStop:
            // A new task's first stop can come before its creator's event.
            try firstStopOfNewTask(tid)
        case .exited, .killed:
            break  // a task PageWatch had already let go of
        default:
            try Ptrace.cont(tid)
        }
    }

    /// A followed process ended: its `exit` record; it leaves the session.
    func processEnded(_ p: ProcessTracker) {
        processes[p.pid] = nil
        guard let end = p.end else { return }
        emit(.exit(pid: p.pid, end: end, sweeps: p.sweeps, faults: p.totalFaults, timeNs: p.endTimeNs))
    }
}

// MARK: - New tasks and the processes PageWatch does not track

extension Tracker {
    /// A tracked process forked or vforked `child` (its event stop, in `thread`).
    func forked(_ child: Int32, kind: PtraceEvent, parent: ProcessTracker, thread: TrackedThread) throws {
        newChildren[child] = (kind, parent)
        if kind == .fork {
            if config.followForks {
                followedChildren[child] = parent.forkedCopy(pid: child, thread: thread)
                emit(.fork(pid: child, parent: parent.pid, timeNs: wallClockNs()))
            } else {
                armedAtFork[child] = (parent.injector.remote, parent.armedRegions())
            }
        }
        if unclassified.remove(child) != nil { try firstStopOfNewTask(child) }
    }

    /// A vfork child of a tracked process exec'd: it has its own address
    /// space now. Followed, it is a tracked process from its new image on.
    func vforkChildExeced(_ child: Int32, parent: ProcessTracker) throws {
        checkExecPrivilege(pid: child)
        guard config.followForks else {
            if resumeMode == .syscallStops { return try Ptrace.detach(child) }
            untracked.insert(child)
            try Ptrace.cont(child)
            return
        }
        let p = ProcessTracker(session: self, pid: child, parent: parent.pid)
        let state = TrackedThread(tid: child)
        state.syscall.completing = 0
        p.threads[child] = state
        processes[child] = p
        emit(.fork(pid: child, parent: parent.pid, timeNs: wallClockNs()))
        try p.startImage(tid: child)
        try p.resume(state)
    }

    /// The first stop of a task PageWatch has not seen: a thread of a
    /// tracked process, or a process forked by one.
    func firstStopOfNewTask(_ tid: Int32) throws {
        if let (kind, parent) = newChildren.removeValue(forKey: tid) {
            if kind == .vfork {
                // Shares the parent's memory until it execs: its writes and
                // syscalls are handled like the parent's own.
                let state = TrackedThread(tid: tid)
                state.vforkChild = true
                parent.threads[tid] = state
                try Ptrace.cont(tid)
            } else if let followed = followedChildren.removeValue(forKey: tid) {
                // Its pages are armed as the parent's were: tracked as they are.
                processes[tid] = followed
                let thread = followed.thread(tid)
                followed.injector.shareSlotData(thread, forkChild: followed.parent != nil)
                try followed.learnRseq(thread)
                try followed.resume(thread)
            } else {
                // A copy of the address space with the armed pages armed: give
                // it the program's protections back before it runs an instruction.
                try disarmCopy(tid)
                if resumeMode == .syscallStops {
                    try Ptrace.detach(tid)  // attach mode: no filter, so no need to stay traced
                } else {
                    untracked.insert(tid)
                    try Ptrace.cont(tid)
                }
            }
            return
        }
        if let group = threadGroup(of: tid), let p = processes[group], p.trackingStopped {
            untracked.insert(tid)
            try Ptrace.cont(tid)
        } else if let group = threadGroup(of: tid), let p = processes[group] {
            let state = TrackedThread(tid: tid)
            state.awaitsCloneEvent = true  // its first stop came before its parent's clone event
            p.threads[tid] = state
            try p.learnRseq(state)
            try p.sweepIfPending(in: state)
            try p.resume(state)
        } else if let group = threadGroup(of: tid),
            untracked.contains(group) || untracked.contains(parentProcess(of: tid))
        {
            // A descendant of an untracked process: nothing of ours is armed in it.
            untracked.insert(tid)
            try Ptrace.cont(tid)
        } else {
            // Its parent's fork event has not come yet: wait for it.
            unclassified.insert(tid)
        }
    }

    /// Restores the program's protection in a forked copy, for every region
    /// that was armed when it was forked.
    func disarmCopy(_ child: Int32) throws {
        guard let (injector, regions) = armedAtFork.removeValue(forKey: child), let injector else { return }
        for region in regions {
            let o = try injector.run(
                HostArchitecture.syscalls.mprotect,
                [region.range.start.value, region.range.length, UInt64(region.protection.rawValue)],
                in: child)
            for h in o.heldSignals { try? Ptrace.tgkill(child, child, h.signal) }
        }
    }

    func threadGroup(of tid: Int32) -> Int32? { statusField("Tgid", tid) }
    func parentProcess(of tid: Int32) -> Int32 { statusField("PPid", tid) ?? 0 }

    func statusField(_ name: String, _ tid: Int32) -> Int32? { ProcFS.statusField(name, of: tid).flatMap { Int32($0) } }

    /// A stop of a process PageWatch stopped tracking: resumed as an
    /// untracked one, but its end is its own (the program's `end`, or a
    /// followed process's `exit`). A thread PageWatch had sent to a syscall
    /// exit is just resumed.
    func handleLetGo(_ event: StopEvent, of p: ProcessTracker) throws {
        switch event {
        case .exited(let tid, let code) where tid == p.pid:
            p.finish(.exited(code: code))
        case .killed(let tid, let sig, _) where tid == p.pid:
            p.finish(.killed(signal: sig))
        case .exited(let tid, _), .killed(let tid, _, _):
            p.threads[tid] = nil
        case .syscallStop(let tid) where p.threads[tid]?.syscall.pendingExit != nil:
            p.threads[tid]?.syscall.pendingExit = nil
            try Ptrace.cont(tid)
        case .signalDelivery(let tid, let sig) where sig == Signal.SIGSEGV && p.isReleasedPageFault(tid):
            try Ptrace.cont(tid)  // the write runs again, now allowed
        default:
            try handleUntracked(event)
        }
    }

    /// An untracked descendant: resumed exactly as without PageWatch.
    func handleUntracked(_ event: StopEvent) throws {
        let tid = event.tid
        switch event {
        case .exited, .killed:
            untracked.remove(tid)
        case .signalDelivery(_, let sig):
            try Ptrace.cont(tid, signal: sig)
        case .groupStop:
            try Ptrace.listen(tid)
        case .event(_, .exec):
            checkExecPrivilege(pid: tid)
            try Ptrace.cont(tid)
        case .event(_, .seccomp):
            noteOwnPtraceAtEntry(tid: tid)
            try Ptrace.cont(tid)
        case .event(_, let kind) where kind == .fork || kind == .vfork || kind == .clone:
            let child = Int32(truncatingIfNeeded: try Ptrace.eventMessage(tid))
            untracked.insert(child)
            if unclassified.remove(child) != nil { try Ptrace.cont(child) }
            try Ptrace.cont(tid)
        default:
            try Ptrace.cont(tid)
        }
    }
}
