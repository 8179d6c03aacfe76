import PageWatchAddressSpace
import PageWatchLog

/// One recorded page write, handed to `Tracker.writeObserver` as it happens
/// (PageWatchKit's write events): the first write to a tracked page since
/// the sweep that last reported it, by the program or by the kernel for it.
public struct PageWrite: Sendable, Equatable {
    /// The process written to: the program, or a followed child.
    public var pid: Int32
    /// The thread that stored, or that made the call the kernel wrote for.
    public var tid: Int32
    public var page: RemoteAddress
    /// The `seq` of the sweep that will report the page: that process's
    /// sweeps so far, plus one (writes before the first sweep are phase 1).
    public var phase: Int
    /// `read`, `signal frame SIGUSR1`, ...: the kernel wrote the page for
    /// the program; nil for the program's own store.
    public var kernel: String?
    /// The store took a write fault (never for the kernel's writes).
    public var fault: Bool
    /// The writer's call stack, innermost first, symbolized; empty with
    /// `stackDepth` 0. For the kernel, the stack at the call.
    public var frames: [Frame]
}

extension ProcessTracker {
    /// Every page write the engine records goes through here: into the
    /// ledger the sweep's `sites` come from, and to the session's write
    /// observer when one is set. Only then are the frames symbolized at the
    /// write, through the per-process cache the sweep reads next (so the
    /// sweep does not pay twice); without an observer (the CLI) the fault
    /// path stays as it was, unwinding only.
    func noteWrite(_ page: RemoteAddress, by writer: Writer, fault: Bool, tid: Int32) {
        // Attribution off and nobody observing: no writer to keep (the
        // ledger's map would cost memory per dirty page, issue 6).
        guard config.stackDepth > 0 || session.writeObserver != nil else { return }
        guard ledger.record(page, by: writer, fault: fault), let observe = session.writeObserver else { return }
        let frames = writer.stack.enumerated().map { i, ip in frame(ip, isReturnAddress: i > 0) }
        observe(PageWrite(pid: pid, tid: tid, page: Page.floor(page), phase: sweeps + 1, kernel: writer.kernel,
                          fault: fault, frames: frames))
    }
}
