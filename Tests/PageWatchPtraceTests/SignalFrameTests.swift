import Glibc
import Testing
import PageWatchAddressSpace
import PageWatchLog
@testable import PageWatchPtrace
@testable import PageWatchEngine

/// The engine's handling of a signal's delivery, on a live tracee.
@Suite(.serialized) struct SignalFrameTests {
    typealias Arch = HostArchitecture

    /// Resumes `pid` (passing signals on) until it stops to take `signal`.
    func runUntilDelivery(of signal: Int32, _ pid: Int32) throws {
        try Ptrace.cont(pid)
        while true {
            guard let e = try Wait.next(pid) else { continue }
            switch e {
            case .signalDelivery(_, let sig) where sig == signal: return
            case .signalDelivery(_, let sig): try Ptrace.cont(pid, signal: sig)
            case .exited, .killed:
                Issue.record("pid \(pid) ended before \(Signal.name(signal))")
                return
            default: try Ptrace.cont(pid)
            }
        }
    }

    /// A signal delivered before anything is tracked (an attach, before its
    /// first sweep) still has its frame kept out of sweeps: the kernel writes
    /// the frame only when the thread next runs, and the attach sweep in
    /// another thread may arm the signal stack first (Go died of the
    /// SI_KERNEL SIGSEGV for a SIGURG frame it could not write).
    @Test func aFrameDeliveredBeforeTheFirstSweepIsKeptOutOfIt() throws {
        var output: [Int32] = [0, 0]
        #expect(pipe(&output) == 0)
        let pid = try Launcher.launch(
            [RemoteSyscallTests.fixture("fx_sigaltstack")], options: RemoteSyscallTests.options,
            standardOutput: output[1], emptySignalMask: true)
        close(output[1])
        defer { close(output[0]) }
        let (gadget, _) = try RemoteSyscall.bootstrap(in: pid, completing: 0)
        let tracker = Tracker(
            configuration: TrackerConfiguration(
                command: [], selection: Selection([]), intervalNs: 0, sweepSignal: nil),
            emit: { _ in })
        let process = ProcessTracker(session: tracker, pid: pid, parent: nil)
        process.injector.remote = gadget
        let thread = TrackedThread(tid: pid)
        process.threads[pid] = thread
        // The end of phase 1 (an ignored SIGUSR2): its alternate stack and
        // SA_ONSTACK handler are set; learned as at an attach's first stop.
        try runUntilDelivery(of: Signal.SIGUSR2, pid)
        try process.learnSignalActions(thread)
        try process.learnAltStack(thread)
        let alt = try #require(thread.signals.altStack)
        try runUntilDelivery(of: Signal.SIGUSR1, pid)
        #expect(process.memory.trackedPageCount == 0)

        try process.handleSignal(Signal.SIGUSR1, thread)  // delivers it
        let kept = thread.syscall.callOutputs ?? PageSet()
        #expect(kept.contains(RemoteAddress(alt.end.value - 1)), "frame pages kept: \(kept.ranges)")

        #expect(try RemoteSyscallTests().waitForExit(pid) == 0)
        #expect(RemoteSyscallTests().readAll(output[0]).contains("handled 2\n"))
    }
}
