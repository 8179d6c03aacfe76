import PageWatchAddressSpace
import PageWatchEngine
import PageWatchLog

/// What happens while a `WatchedProgram` runs, in order.
public enum WatchEvent: Sendable, Equatable {
    /// The program is loaded, stopped before its first instruction.
    case start(pid: Int32)
    /// The first write to a watched page since the sweep that last reported it.
    case write(WriteEvent)
    /// A sweep reported the pages written since the previous one.
    case sweep(SweepEvent)
    /// The process called `exec`: watching restarts on the new image.
    case exec(pid: Int32, path: String)
    /// `followForks`: a new process, watched with its own sweeps from here on.
    case fork(pid: Int32, parent: Int32)
    /// PageWatch stopped watching the process (its own seccomp filter forbids
    /// `mprotect`) and lets it run on unchanged.
    case untracked(pid: Int32, reason: String)
    /// `followForks`: a watched process other than the program ended.
    case exit(pid: Int32, ProgramEnd)
    /// The program ended; always the last event.
    case end(ProgramEnd)

    /// The event of an engine record; nil for records of attach mode.
    init?(_ record: LogRecord) {
        switch record {
        case let .start(pid, _, _, _, _, _, _, _, _): self = .start(pid: pid)
        case let .exec(pid, path, _, _, _, _): self = .exec(pid: pid, path: path)
        case let .sweep(r): self = .sweep(SweepEvent(r))
        case let .fork(pid, parent, _): self = .fork(pid: pid, parent: parent)
        case let .untracked(pid, reason, _): self = .untracked(pid: pid, reason: reason)
        case let .exit(pid, end, _, _, _): self = .exit(pid: pid, end)
        case let .end(_, end, _, _, _): self = .end(end)
        case .attach, .detach, .missed, .warning: return nil
        }
    }
}

/// One page's first write in a phase: by a store of the program (it took a
/// write fault), or by the kernel for a system call of the program.
public struct WriteEvent: Sendable, Equatable {
    /// The process written to: the program, or a followed child.
    public var pid: Int32
    /// The thread that stored, or that made the call the kernel wrote for.
    public var tid: Int32
    /// The page's address (page-aligned).
    public var page: UInt64
    /// The `seq` of the sweep that reports this page: writes before the
    /// first sweep are phase 1, those between sweeps 1 and 2 phase 2, ...
    public var phase: Int
    /// The kernel wrote the page for the program: the call (`read`,
    /// `fstat`, ...), or `signal frame SIGUSR1`, `clone`, `exit`. nil for the
    /// program's own store.
    public var kernelCall: String?
    /// The writer's call stack, innermost first: the storing instruction's
    /// function, then its callers; for the kernel, the stack at the call
    /// (libc's wrapper first). Empty with `stackDepth` 0.
    public var frames: [Frame]

    init(_ write: PageWrite) {
        pid = write.pid
        tid = write.tid
        page = write.page.value
        phase = write.phase
        kernelCall = write.kernel
        frames = write.frames
    }

    /// Who wrote the page, as a sweep's site names it: `[kernel] read`, else
    /// the innermost frame's function (else `module+0xOFFSET`, else `0xIP`);
    /// `[unknown]` without frames.
    public var writer: String {
        if let kernelCall { return "[kernel] " + kernelCall }
        return frames.first?.display ?? "[unknown]"
    }
}

/// A sweep: the pages of one process written since the previous sweep.
public struct SweepEvent: Sendable, Equatable {
    /// 1 for the process's first sweep, then one more each time. Sweep 1
    /// reports every watched page (`ranges`, `zeroRanges` and `fileRanges`
    /// together): watching begins there.
    public var seq: Int
    public var pid: Int32
    public var reason: SweepReason
    /// Write faults taken since the previous sweep.
    public var faults: Int
    /// The written pages: sorted, coalesced, half-open, page-aligned ranges.
    public var ranges: [Range<UInt64>]
    /// Pages whose contents changed unseen (new to the watch: sweep 1, a new
    /// mapping; or discarded) that read as zeros now; not in `ranges`.
    public var zeroRanges: [Range<UInt64>]
    /// Such pages of private file mappings that hold their file's contents
    /// (never copied on write); in neither of the others.
    public var fileRanges: [Range<UInt64>]

    init(_ record: SweepRecord) {
        seq = record.seq
        pid = record.pid
        reason = record.reason
        faults = record.faults
        ranges = record.ranges.map { $0.start.value..<$0.end.value }
        zeroRanges = record.zeroRanges.map { $0.start.value..<$0.end.value }
        fileRanges = record.fileRanges.map { $0.start.value..<$0.end.value }
    }

    /// The written pages' addresses, in order.
    public var pages: [UInt64] { Self.addresses(ranges) }

    /// Every page the sweep reports changed (`ranges`, `zeroRanges` and
    /// `fileRanges`), in order: what a copy of the process's memory must
    /// take again.
    public var reportedPages: [UInt64] { Self.addresses(ranges + zeroRanges + fileRanges).sorted() }

    static func addresses(_ ranges: [Range<UInt64>]) -> [UInt64] {
        ranges.flatMap { stride(from: $0.lowerBound, to: $0.upperBound, by: Int(pageSize)) }
    }
}

/// Bytes per page: every address in the events is a multiple of it.
public let pageSize: UInt64 = Page.size
