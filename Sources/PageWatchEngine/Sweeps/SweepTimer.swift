import Glibc
import PageWatchPtrace

/// Periodic sweeps (and `attach --duration`'s deadline) while the tracer
/// blocks in `waitpid`. Kernel timers (`timer_create`, SIGEV_THREAD_ID)
/// send SIGALRM (no SA_RESTART) to the tracer thread; the event loop
/// unblocks it only around its `waitpid`, so no other call of the tracer is
/// interrupted, and reads the time to know what is due. No thread of its
/// own: PageWatch stays single-threaded, so when it is killed its files
/// close before the kernel releases its tracees, which the attach guardian
/// relies on (it must see PageWatch's files closed before the program is
/// released).
final class SweepTimer {
    static let signal = Signal.SIGALRM

    private let intervalNs: UInt64
    private var nextDue: UInt64
    private let deadline: UInt64?
    private var timers: [KernelTimer] = []

    /// `intervalNs` 0: no periodic sweeps. `durationNs`: the deadline, from now.
    init(intervalNs: UInt64, durationNs: UInt64? = nil) throws {
        self.intervalNs = intervalNs
        let now = monotonicNs()
        nextDue = now + intervalNs
        deadline = durationNs.map { now + $0 }
        setSignalBlocked(Self.signal, true)
        try installWakeupHandler(Self.signal)
        if intervalNs > 0 {
            timers.append(try KernelTimer(signal: Self.signal, firstNs: intervalNs, periodNs: intervalNs))
        }
        if let durationNs { timers.append(try KernelTimer(signal: Self.signal, firstNs: durationNs, periodNs: 0)) }
    }

    /// True once per elapsed interval (intervals missed meanwhile are not made up).
    func takeDue() -> Bool {
        guard intervalNs > 0 else { return false }
        let now = monotonicNs()
        guard now >= nextDue else { return false }
        nextDue += intervalNs
        if nextDue <= now { nextDue = now + intervalNs }
        return true
    }

    /// A sweep just ended: the next interval is counted from now. A sweep
    /// can take longer than the interval (refreshing the maps of a large
    /// heap, re-arming thousands of ranges): counted from when it was due,
    /// the next would be due at once, and sweeps taken back to back at each
    /// stop left the program no time to run.
    func sweepEnded() {
        guard intervalNs > 0 else { return }
        nextDue = monotonicNs() + intervalNs
    }

    /// True once the deadline has passed.
    var hasExpired: Bool { deadline.map { monotonicNs() >= $0 } ?? false }

    func stop() {
        for t in timers { t.cancel() }
        timers = []
    }
}

func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
