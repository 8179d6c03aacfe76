import Glibc
import PageWatchAddressSpace
import PageWatchPtrace

/// The one-stop fault path (`FaultTrampoline`): the thread runs
/// the un-arming `mprotect` itself on its way back to the faulting
/// instruction, so PageWatch does not wait for a second stop.
extension ProcessTracker {
    /// Set PAGEWATCH_FAULT_PATH=two-stop to take the injected-gadget path
    /// for every fault (for the benchmark's comparison, and for debugging).
    static let oneStopFaults = getenv("PAGEWATCH_FAULT_PATH").map { String(cString: $0) != "two-stop" } ?? true

    /// Un-arms `page` through the thread's trampoline slot and resumes the
    /// thread. False when it cannot be used here (no slot free, signals
    /// held for the thread, a syscall stop); the caller takes the slow path.
    func unarmThroughTrampoline(
        _ page: RemoteAddress, _ span: AddressRange, _ protection: Protection, _ thread: TrackedThread
    ) throws -> Bool {
        let tid = thread.tid
        guard Self.oneStopFaults, injector.slotsUsable, let slots = injector.slots, thread.signals.held.isEmpty,
            !thread.syscall.atEntry, thread.syscall.pendingExit == nil, thread.syscall.completing == nil,
            session.detaching == nil, let slot = thread.trampoline.slot ?? freeTrampolineSlot()
        else { return false }
        if thread.trampoline.slowPathPage == page {
            thread.trampoline.slowPathPage = nil
            return false
        }
        try slots.enter(slot, tid: tid, mprotect: span, protection)
        thread.trampoline.slot = slot
        thread.trampoline.page = page
        thread.trampoline.span = span
        thread.trampoline.ownSyscallStops = session.resumeMode == .syscallStops ? 2 : 0
        thread.trampoline.ownCallDone = false
        memory.markUnarmed(span)
        try Ptrace.resume(tid, mode: session.resumeMode)
        return true
    }

    /// A slot no thread holds, if any (more threads than slots take the slow path).
    func freeTrampolineSlot() -> Int? {
        let used = Set(threads.values.compactMap(\.trampoline.slot))
        return (0..<FaultTrampoline.slotCount).first { !used.contains($0) }
    }

    /// At a thread's first stop after it was sent through its slot. Its own
    /// `mprotect`'s syscall stops (attach mode, or a filter that does not
    /// know the scratch address): resumed at once, true. Anywhere else in
    /// the slot's code (a signal or an interrupt came first): the registers
    /// the slot would have left; if its call has not run, or failed (ENOMEM
    /// at vm.max_map_count), the page is still protected: armed
    /// again in the model, keeping its dirty bit, and the write faults again
    /// and takes the slow path.
    func settleTrampoline(_ thread: TrackedThread, at event: StopEvent) throws -> Bool {
        let tid = thread.tid
        guard let page = thread.trampoline.page, let slot = thread.trampoline.slot,
            injector.remote != nil
        else { return false }
        switch event {
        case .exited, .killed, .event(_, .exit):
            // Ending (killed in the slot, say): nothing to settle, and a
            // reaped thread has no registers to read (ESRCH there dropped the
            // end of a killed leader, and PageWatch then failed in waitpid).
            thread.trampoline.page = nil
            thread.trampoline.span = nil
            return false
        default:
            break
        }
        let ownSyscallStop: Bool
        if case .syscallStop = event {
            ownSyscallStop = thread.trampoline.ownSyscallStops > 0
        } else {
            ownSyscallStop = false
        }
        thread.trampoline.ownSyscallStops = ownSyscallStop ? thread.trampoline.ownSyscallStops - 1 : 0
        // A syscall stop right after the slot's mprotect exit is past the
        // slot's end (it makes no other call): no registers to read.
        var pastSlot = false
        if case .syscallStop = event, thread.trampoline.ownCallDone, !ownSyscallStop { pastSlot = true }
        thread.trampoline.ownCallDone = ownSyscallStop && thread.trampoline.ownSyscallStops == 0
        if ownSyscallStop {
            // The slot's mprotect entry or exit: known without reading the
            // registers (the attached fault's two extra stops cost a resume each).
            try Ptrace.resume(tid, mode: session.resumeMode)
            if thread.interrupt.pending { try? Ptrace.interrupt(tid) }
            return true
        }
        if case .signalDelivery(_, Signal.SIGSEGV) = event, let info = try? Ptrace.signalInfo(tid),
            info.code == SignalInfo.SEGV_ACCERR, Page.floor(info.faultAddress) != page
        {
            // The common case, cheaply: a write fault on another
            // page. The thread has left the slot and got past the write that
            // faulted on `page` (had the slot's mprotect failed, that write
            // would have faulted again on `page`): nothing to settle or read.
            thread.trampoline.page = nil
            thread.trampoline.span = nil
            stopSignalInfo = (tid, info)
            return false
        }
        guard let trampoline = injector.slots else { return false }
        let regs = pastSlot ? nil : try Arch.readRegisters(tid: tid)
        let inside = regs.map { trampoline.slot(at: Arch.instructionPointer($0)) == slot } ?? false
        switch event {
        case .syscallStop where inside, .event(_, .seccomp) where inside:
            try Ptrace.resume(tid, mode: session.resumeMode)
            // The kernel dropped a pending PTRACE_INTERRUPT at this stop: ask again.
            if thread.interrupt.pending { try? Ptrace.interrupt(tid) }
            return true
        default:
            break
        }
        let span = thread.trampoline.span ?? AddressRange(start: page, end: page + Page.size)
        thread.trampoline.page = nil
        thread.trampoline.span = nil
        if inside, !thread.exiting, let regs {
            let settled = try trampoline.settle(tid: tid, registers: regs)
            trace("  settled slot \(slot) of \(tid) (call ran: \(settled?.ran ?? false))")
        }
        let result = try trampoline.result(slot, tid: tid)
        if result != 0, case .writable = memory.state(of: page) {
            trace("  slot \(slot) mprotect of \(page) gave \(result): armed again")
            memory.markArmedKeepingDirty(span)
            // A failure, or a signal before the call (1): the next fault there
            // takes the slow path. A program signalled more often than a
            // slot's round trip (Go preempts every 10 ms with SIGURG) would
            // otherwise fault on the page again and again.
            thread.trampoline.slowPathPage = page
        }
        return false
    }

    /// Before PageWatch lets go of the process (detach, untracked): every
    /// thread out of its slot, the model true to the kernel.
    func settleAllTrampolines() throws {
        for tid in threads.keys.sorted() {
            guard let thread = threads[tid], thread.trampoline.page != nil, !thread.exiting else { continue }
            _ = try settleTrampoline(thread, at: .interruptStop(tid: tid))
        }
    }
}
