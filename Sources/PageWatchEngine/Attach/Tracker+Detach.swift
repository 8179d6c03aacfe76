import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// The end of `pagewatch attach`: every thread parked at a stop, a last
/// sweep, the program's protections and the gadget page removed, detached.
extension Tracker {
    /// Why to detach now, if at all.
    func detachCondition() -> SweepReason? {
        guard resumeMode == .syscallStops else { return nil }
        // Taken whatever follows (a second signal during a detach asks for nothing).
        let raised = takeRaisedSignal() != nil
        // A detach or the end under way: a signal asks for nothing more.
        guard detaching == nil, main.end == nil else { return nil }
        if raised || givingUp != nil { return .detach }
        if timer?.hasExpired == true { return .detach }
        if let n = config.maxSweeps, main.sweeps >= n { return .detach }
        return nil
    }

    /// Stops every thread: each is parked at its next stop (`proceed`).
    func startDetach(_ reason: SweepReason) throws {
        guard let attach = attachState else { return }
        attach.detaching = reason
        attach.lastUnparkNs = monotonicNs()
        for p in processes.values where p.end == nil {
            p.pendingSweep = nil
            for tid in p.threads.keys where p.threads[tid]?.waiting != nil {
                // Kept at its stop (StopWaiting): parked there. At a fault, the
                // write runs again after the detach, on a page given back.
                p.threads[tid]?.waiting = nil
                attach.parked.insert(tid)
                attach.parkedWaiting.insert(tid)
            }
            for tid in p.threads.keys where !attach.parked.contains(tid) {
                if (try? Ptrace.interrupt(tid)) != nil { p.threads[tid]?.interrupt.pending = true }
            }
        }
    }

    /// Once every thread is parked: the last sweep (reason `detach`), the
    /// program's protections back, the gadget page gone, every thread
    /// detached with the signal it was stopped for; signals held during
    /// PageWatch's injections are sent again. Returns true when done.
    func finishDetachIfParked() throws -> Bool {
        guard let attach = attachState else { return false }
        let live = processes.values.filter { $0.end == nil }
        guard live.allSatisfy({ $0.threads.keys.allSatisfy(attach.parked.contains) }) else {
            if Self.debug {
                let waits =
                    "  detach waits for "
                    + live.flatMap { p in
                        p.threads.keys.sorted().filter { !attach.parked.contains($0) }.map {
                            "\($0) \(p.threads[$0].map { "interrupt \($0.interrupt.pending) waiting \(String(describing: $0.waiting))" } ?? "")"
                        }
                    }
                    .joined(separator: ", ")
                if waits != attach.lastDetachWait { trace(waits) }
                attach.lastDetachWait = waits
            }
            return false
        }
        for p in live {
            try p.detachSweep()
        }
        for p in live {
            for tid in p.threads.keys.sorted() {
                // A thread with held signals sits in a signal-delivery stop
                // (the gadget's, or the one `takePendingFault` left it in):
                // the first rides on the detach with its siginfo, as on a
                // resume. A held fault never does, nor is it sent again: its
                // instruction runs again, and faults again if the fault was
                // the program's own (a JVM's safepoint poll or null check:
                // sent again too, it came twice, once as SI_TKILL without its
                // address, and the JVM died of it).
                var held = p.threads[tid]?.signals.held ?? []
                var delivered = attach.parkedSignals[tid]
                if delivered == nil, let i = held.firstIndex(where: { !$0.isRaisedByItsInstruction }) {
                    delivered = held.remove(at: i)
                }
                do {
                    if let delivered {
                        trace("  detach: \(tid) gets \(Signal.name(delivered.signal)) code \(delivered.code)")
                        try Ptrace.detach(tid, delivering: delivered)
                    } else {
                        try Ptrace.detach(tid)
                    }
                } catch TraceError.call(_, let e, _, _) where e == .ESRCH {
                    continue  // it died meanwhile
                }
                sendHeldAgain(held, pid: p.pid, tid: tid)
            }
        }
        return true
    }

    /// Held signals that could not ride on the thread's resume or release,
    /// sent again (their `si_code` becomes `SI_TKILL`). A fault the kernel raised is
    /// not: its instruction runs again and raises it again (the program's
    /// own, once, with its siginfo) or succeeds (PageWatch's, its page
    /// given back).
    func sendHeldAgain(_ held: [HeldSignal], pid: Int32, tid: Int32) {
        for h in held {
            if h.isRaisedByItsInstruction {
                trace("  \(tid): held \(Signal.name(h.signal)) code \(h.code) left to its instruction")
                continue
            }
            trace("  \(tid): held \(Signal.name(h.signal)) sent again")
            try? Ptrace.tgkill(pid, tid, h.signal)
        }
    }

    /// Detaching: a thread not parked whose interrupt went unanswered is
    /// interrupted again (else the detach could wait for its next own stop).
    func resendDetachInterrupts() {
        guard let attach = attachState else { return }
        let now = monotonicNs()
        var unanswered = false
        for p in processes.values where p.end == nil {
            for (tid, state) in p.threads where !attach.parked.contains(tid) && !state.exiting && state.waiting == nil {
                if state.interrupt.sentNs == 0 { state.interrupt.sentNs = now; continue }
                guard now &- state.interrupt.sentNs >= Self.interruptPatienceNs else { continue }
                state.interrupt.sentNs = now
                if (try? Ptrace.interrupt(tid)) != nil { state.interrupt.pending = true }
                unanswered = true
            }
        }
        // Nothing shows a thread waiting for the handler (/proc says it is
        // running): a program with a userfaultfd range whose thread has not
        // stopped for a while gets its parked threads run on.
        if unanswered, !UserfaultRanges.shared.isEmpty, now &- attach.lastUnparkNs >= Self.userfaultPatienceNs {
            attach.lastUnparkNs = now
            unparkForUserfaultWaiters(now: now)
        }
    }

    /// How long a detach waits for a thread of a program with a userfaultfd
    /// range before the parked threads run on (`unparkForUserfaultWaiters`).
    static let userfaultPatienceNs: UInt64 = 100_000_000

    /// A thread inside a system call that reads a page the program's own
    /// userfaultfd handler must supply (or writes one the program
    /// write-protected) cannot stop (an interrupt does not end
    /// that wait) until the handler has run; if the detach parked the handler
    /// first, it never would. So the threads parked on their way on are let
    /// run and interrupted again: parked at their next stop. Threads parked
    /// where they waited for PageWatch (a memory call's entry, a fault still
    /// to judge) stay: letting them run would bypass PageWatch.
    func unparkForUserfaultWaiters(now: UInt64) {
        guard let attach = attachState else { return }
        for p in processes.values where p.end == nil {
            for (tid, state) in p.threads
            where attach.parked.contains(tid) && !attach.parkedWaiting.contains(tid)
                && !state.exiting && !state.inGroupStop
            {
                trace("  detach: \(tid) runs on while a thread waits for the program's userfaultfd handler")
                do {
                    if let held = attach.parkedSignals.removeValue(forKey: tid) {
                        try Ptrace.deliver(held, to: tid, mode: resumeMode)
                    } else {
                        try Ptrace.resume(tid, mode: resumeMode)
                    }
                } catch {
                    continue  // gone meanwhile: its exit is reported as any other
                }
                attach.parked.remove(tid)
                state.interrupt.sentNs = now
                if (try? Ptrace.interrupt(tid)) != nil { state.interrupt.pending = true }
            }
        }
    }
}
