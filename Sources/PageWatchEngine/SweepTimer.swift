import Glibc
import Synchronization
import PageWatchPtrace

/// Periodic sweeps while the tracer blocks in `waitpid`. A background thread
/// marks a sweep due and signals the tracer thread (SIGALRM, no SA_RESTART)
/// until the event loop takes it; the loop unblocks SIGALRM only around its
/// `waitpid`, so no other call of the tracer is interrupted.
final class SweepTimer: @unchecked Sendable {
    static let signal = Signal.SIGALRM

    private let intervalNs: UInt64
    private let tracerPid: Int32
    private let tracerTid: Int32
    private let due = Atomic<Bool>(false)
    private let stopped = Atomic<Bool>(false)
    private var thread = pthread_t()

    init(intervalNs: UInt64) throws {
        self.intervalNs = intervalNs
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

    func stop() {
        stopped.store(true, ordering: .releasing)
        pthread_join(thread, nil)
    }

    private func loop() {
        // The timer thread must never take the wake-up signal itself.
        setSignalBlocked(Self.signal, true)
        var next = monotonicNs() + intervalNs
        while !stopped.load(ordering: .acquiring) {
            let now = monotonicNs()
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
