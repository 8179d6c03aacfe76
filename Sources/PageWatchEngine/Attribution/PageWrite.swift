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
    /// A page write, recorded by the process's `WriterAttribution` for the next sweep.
    func noteWrite(_ page: RemoteAddress, by writer: Writer, fault: Bool, tid: Int32) {
        attribution.noteWrite(page, by: writer, fault: fault, tid: tid, phase: sweeps + 1)
    }
}
