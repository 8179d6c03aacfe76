import Glibc
import Synchronization
import PageWatchPtrace

/// Periodic sweeps (and `attach --duration`'s deadline) while the tracer
/// blocks in `waitpid`. A background thread marks a sweep due (or the
/// deadline passed) and signals the tracer thread (SIGALRM, no SA_RESTART)
/// until the event loop takes it; the loop unblocks SIGALRM only around its
/// `waitpid`, so no other call of the tracer is interrupted.
final class SweepTimer: @unchecked Sendable {
    static let signal = Signal.SIGALRM

    private let intervalNs: UInt64
    private let deadline: UInt64?
    private let expired = Atomic<Bool>(false)
    private let tracerPid: Int32
    private let tracerTid: Int32
    private let due = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    private var thread = pthread_t()

    /// `intervalNs` 0: no periodic sweeps. `durationNs`: the deadline, from now.
    init(intervalNs: UInt64, durationNs: UInt64? = nil) throws {
        self.intervalNs = intervalNs
        deadline = durationNs.map { monotonicNs() + $0 }
        tracerPid = getpid()
        tracerTid = currentThreadID()
        setSignalBlocked(Self.signal, true)
        try installWakeupHandler(Self.signal)
    }

    func start() {
        let unmanaged = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { arg in
            let timer = Unmanaged<SweepTimer>.fromOpaque(arg!).takeRetainedValue()
            timer.loop()
            return nil
        }, unmanaged.toOpaque())
    }

    /// True once per elapsed interval.
    func takeDue() -> Bool { due.exchange(false, ordering: .acquiringAndReleasing) }

    /// True once the deadline has passed.
    var hasExpired: Bool { expired.load(ordering: .acquiring) }

    func stop() {
        stopped.store(true, ordering: .releasing)
        pthread_join(thread, nil)
    }

    private func loop() {
        // The timer thread must never take the wake-up signal itself.
        setSignalBlocked(Self.signal, true)
        var next = intervalNs > 0 ? monotonicNs() + intervalNs : UInt64.max
        while !stopped.load(ordering: .acquiring) {
            let now = monotonicNs()
            if let deadline, now >= deadline, !expired.load(ordering: .acquiring) {
                expired.store(true, ordering: .releasing)
                _ = try? Ptrace.tgkill(tracerPid, tracerTid, Self.signal)
            }
            if now < next {
                sleepNs(min(next - now, 20_000_000))
                continue
            }
            due.store(true, ordering: .releasing)
            while due.load(ordering: .acquiring) && !stopped.load(ordering: .acquiring) {
                _ = try? Ptrace.tgkill(tracerPid, tracerTid, Self.signal)
                sleepNs(1_000_000)
            }
            next += intervalNs
            let after = monotonicNs()
            if next <= after { next = after + intervalNs }
        }
    }
}

func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func sleepNs(_ ns: UInt64) {
    var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}
