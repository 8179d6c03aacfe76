import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// Threads and program images: a new image's address space, rseq areas,
/// interrupted calls put back, threads gone.
extension ProcessTracker {
    /// A new program image (the first exec, or a later one): forget the old
    /// address space and place the injection gadget in the new one.
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
        presumption.reset()
        ioUring = IOUringState()  // io_uring fds are always close-on-exec
        UserfaultRanges.shared.forget(pid: pid)  // a new address space
        stackAnchors = []
        faultsThisInterval = 0
        attribution.startImage()
        try injector.place(in: leader, completing: completing, journal: guardianJournal)
        injector.shareSlotData(leader, forkChild: parent != nil)
        try startWriteProtection(leader)
        try learnSignalActions(leader)  // exec reset the handlers; SIG_IGN stays
        // A followed child's exec is always said: it names the process (cc1,
        // as); so is one whose backends differ from those the log last named.
        let backends = backendNames
        if sweeps > 0 || totalFaults > 0 || parent != nil || (backendsSaid != nil && backendsSaid != backends) {
            let path = ProcFS.executable(of: pid) ?? (parent == nil ? config.command[0] : "")
            emit(
                .exec(
                    pid: pid, path: path, command: ProcFS.commandLine(of: pid), timeNs: wallClockNs(),
                    mappings: namedSelectionNow(), backends: backends))
            backendsSaid = backends
        }
        session.checkExecPrivilege(pid: pid)
    }

    /// Looks up the thread's rseq area once it has one and pins it.
    func learnRseq(_ thread: TrackedThread) throws {
        let tid = thread.tid
        guard !thread.rseqKnown else { return }
        guard let area = try? Ptrace.rseqArea(tid) else { return }
        thread.rseqKnown = true
        try injector.pin(area.range.pageAligned, in: &memory, thread)
    }

    /// Injections must leave blocked calls as they were: PageWatch's
    /// PTRACE_INTERRUPT of a thread blocked in `epoll_wait` and a few others
    /// ends the call with EINTR, which the kernel never restarts (as after
    /// SIGSTOP and SIGCONT without the tool).
    /// The program would see an error it would not have had: the call is
    /// rewound to run again (with its full timeout again, if it had one).
    /// `onlyWithoutSignal`: not sure an interrupt of PageWatch's ended the
    /// call (`interruptMayLinger`): not when a signal is pending for the
    /// thread, whose EINTR the program must see.
    func undoInterruptEINTR(_ thread: TrackedThread, onlyWithoutSignal: Bool = false) throws {
        let tid = thread.tid
        let regs = try Arch.readRegisters(tid: tid)
        guard Arch.syscallResult(regs) == -Int64(Errno.EINTR.rawValue),
            Arch.row(number: Arch.syscallNumber(regs))?.endedByStop == true
        else { return }
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
        attribution.unwinder?.threadGone(tid: tid)
        if threads[tid]?.awaitsCloneEvent == true { endedBeforeItsCloneEvent.insert(tid) }
        threads[tid] = nil
    }
}
