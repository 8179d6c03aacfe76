import Glibc
import PageWatchAddressSpace
import PageWatchLog
import PageWatchPtrace

/// Sweeps on time whatever the stop rate. A busy program (thousands of
/// faults and memory calls a second) always has a stop queued: the loop
/// looked at the clock, the pending sweep and the `--duration` deadline
/// only when none was, and sweeps came tens of seconds apart, the detach
/// too. Now each turn looks, a due sweep is also served at write-fault
/// stops and at the exits of memory calls, and interrupts that go
/// unanswered are sent again.
extension Tracker {
    /// How long an interrupt may go unanswered before it is sent again.
    static let interruptPatienceNs: UInt64 = 20_000_000

    /// Each turn of the event loop: marks an interval sweep pending when one
    /// is due, and pursues every pending sweep (`pursuePendingSweep`).
    func scheduleSweeps(stopQueued: Bool) throws {
        if allThreadsSeen, let t = timer, t.takeDue() {
            // (Not after a process's exit sweep: its threads are exiting.)
            for p in processes.values where p.end == nil && !p.trackingStopped && !p.finalSweepDone {
                p.requestSweep(.interval)
            }
        }
        guard detaching == nil, allThreadsSeen else { return }
        for p in processes.values.sorted(by: { $0.pid < $1.pid }) where p.pendingSweep != nil && !p.trackingStopped {
            do {
                try p.pursuePendingSweep(stopQueued: stopQueued, intervalNs: config.intervalNs)
            } catch let error as TraceError where p !== main {
                trace("  process \(p.pid) vanished during a sweep: \(error)")
                p.pendingSweep = nil
            }
        }
    }

    /// Whether an interrupt of a sweep or of the detach waits for its stop.
    var interruptOutstanding: Bool {
        processes.values.contains { p in p.threads.values.contains { $0.interrupt.pending && $0.interrupt.sentNs != 0 }
        }
    }

    /// The next stop. With an interrupt outstanding, waits for at most the
    /// interrupt's patience so that it can be sent again: polls for
    /// `Wait.spinNs`, then every 100 us (the other threads' faults wait
    /// for it meanwhile; no timer is needed, and none may exist when the
    /// detach was asked by a signal); otherwise as before
    /// (`Wait.nextSpinning`, which SIGALRM from the timer interrupts).
    func waitForNextStop() throws -> StopEvent? {
        // A timer tick or a detach signal that came while the wake-up
        // signals were blocked: its handler ran as they were unblocked,
        // before this wait, and interrupts nothing.
        guard interruptOutstanding else { return try Wait.nextSpinning(-1, wake: wokenSinceCleared) }
        let now = monotonicNs()
        let until = now + Self.interruptPatienceNs, spinUntil = now + Wait.spinNs
        repeat {
            if let e = try Wait.poll(-1) { return e }
            if monotonicNs() < spinUntil { continue }
            var pause = timespec(tv_sec: 0, tv_nsec: 100_000)
            nanosleep(&pause, nil)
        } while monotonicNs() < until
        return nil
    }
}

extension ProcessTracker {
    /// A pending sweep, each turn of the loop: a thread is interrupted to
    /// serve it (a thread sleeping in a page fault or blocked in a memory
    /// call counts as interruptible), an interrupt unanswered after 20 ms is
    /// sent again, and when no thread can be interrupted an interval sweep
    /// reports without re-arming (`reportOnlySweep`): at once when no stop
    /// is queued, else once it has waited longer than the interval (the
    /// stops queued may never be ones that serve sweeps).
    func pursuePendingSweep(stopQueued: Bool, intervalNs: UInt64) throws {
        guard let reason = pendingSweep, !groupExiting else { return }
        let now = monotonicNs()
        if sweepPendingSince == nil || sweepPendingSince!.sweeps != sweeps { sweepPendingSince = (sweeps, now) }
        // A memory call in flight: its exit serves the sweep (the model is
        // true again only there), and any other stop would wait for it.
        if memoryCallInFlight(besides: 0) { return }
        if stoplessSweepDeclined != sweeps, try sweepWithoutStop(reason: reason) { return }
        let outstanding = threads.filter { $0.value.interrupt.pending }
        if !outstanding.isEmpty {
            for (tid, state) in outstanding.sorted(by: { $0.key < $1.key }) {
                if state.interrupt.sentNs == 0 { state.interrupt.sentNs = now; continue }
                guard now &- state.interrupt.sentNs >= Tracker.interruptPatienceNs else { continue }
                state.interrupt.sentNs = now
                trace("  interrupt of \(tid) unanswered: sent again")
                if !state.exiting, !state.inGroupStop, state.waiting == nil, safeToInterrupt(tid) {
                    _ = try? Ptrace.interrupt(tid)
                } else {
                    requestInterruptIfNeeded(excluding: tid)
                }
            }
            return
        }
        if requestInterruptIfNeeded() { return }
        guard reason == .interval else { return }  // the others wait for their thread's stop
        let waited = now &- sweepPendingSince!.ns
        if !stopQueued || waited >= max(intervalNs, 100_000_000) {
            if try sweepWithoutStop(reason: .interval, ptraceSideLeft: true) { return }
            try reportOnlySweep(reason: .interval)
        }
    }

    /// A write fault with a sweep due: the faulting thread is stopped and
    /// can serve it, before its own fault is handled (the write then
    /// belongs to the next interval). Busy faulting threads are the
    /// program's only stops when it writes much.
    func sweepAtFault(_ thread: TrackedThread) throws {
        guard pendingSweep != nil, !finalSweepDone, !thread.exiting else { return }
        try sweepIfPending(in: thread)
    }

    /// The new fields of a sweep record about re-arming: whether the sweep
    /// re-armed at all, how many of its pages it left writable (reported
    /// again by the next sweep), and which of its pages the previous sweep
    /// had reported and left writable. Only sweeps that re-arm leave pages
    /// for the next; a process's last sweep does not.
    func noteRearming(_ record: inout SweepRecord, dirty: PageSet, reported: PageSet, reportOnly: Bool) {
        session.timer?.sweepEnded()
        // Of `ranges` only: a page left writable that reads as zeros now is in `zero_ranges`.
        let again = reported.intersection(leftWritable)
        record.reportedAgain = again.ranges
        record.rearmed = !reportOnly
        switch record.reason {
        case .interval, .signal, .attach:
            // Still dirty after the sweep: not re-armed. Pinned pages are
            // never armed and reported every sweep by design (format rule 8),
            // not because re-arming failed.
            var left = dirty.intersection(memory.dirtyPages())
            for range in memory.pinned.ranges { left.remove(range) }
            leftWritable = left
        case .exit, .detach, .untracked:
            leftWritable = PageSet()
        }
        record.leftWritable = leftWritable.pageCount
        if Tracker.debug, !leftWritable.isEmpty || !again.isEmpty {
            trace("  sweep \(record.seq) left writable \(leftWritable.ranges), reported again \(again.ranges)")
        }
    }
}
