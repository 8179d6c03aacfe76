import Glibc
import PageWatchAddressSpace
import PageWatchEngine
import PageWatchLog
import PageWatchPtrace

/// A symbolized stack frame: `function`, `module`, `offset`, `file`, `line`,
/// each when known (`PageWatchLog.Frame`).
public typealias Frame = PageWatchLog.Frame
/// How the program ended: `.exited(code:)` or `.killed(signal:)`, and its `shellStatus`.
public typealias ProgramEnd = PageWatchLog.ProgramEnd
/// Why a sweep happened: `.signal` (the sweep signal), `.interval`, `.exit` (the last one), `.untracked`.
public typealias SweepReason = PageWatchLog.SweepReason
/// Why tracing failed: `.execFailed(path:_:)` when the program cannot be run, else the call that failed.
public typealias TraceError = PageWatchPtrace.TraceError

/// Memory to watch in the program. Only private writable memory is ever
/// watched: shared mappings, `[vdso]`, `[vvar]` and `[vsyscall]` never are.
/// Memory that appears later (a new `mmap`, heap growth, a thread's stack)
/// is watched from the sweep that first sees it, and reported entirely there.
public enum Region: Sendable, Hashable {
    /// Every private writable mapping (`.data`, `.bss`, heap, stacks, anonymous).
    case writable
    /// Private anonymous memory: heap, stacks, `mmap(MAP_ANONYMOUS)`.
    case anonymous
    case heap
    /// The main stack and every thread's stack.
    case stack
    /// Private writable mappings of this file.
    case file(String)
    /// The pages of private writable mappings in `[lowerBound, upperBound)`,
    /// widened to whole pages.
    case addresses(Range<UInt64>)

    var trackSpec: TrackSpec {
        switch self {
        case .writable: return .writable
        case .anonymous: return .anon
        case .heap: return .heap
        case .stack: return .stack
        case .file(let path): return .file(path)
        case .addresses(let r): return .range(AddressRange(r.lowerBound, r.upperBound).pageAligned)
        }
    }
}

/// What `WatchedProgram.run` refuses before starting anything.
public enum WatchError: Error, Equatable, CustomStringConvertible {
    /// `arguments` is empty: there is no program to run.
    case noProgram
    /// `stackDepth` is outside 0...256 (the CLI's `--stack-depth` bounds).
    case stackDepthOutOfRange(Int)
    /// A sweep signal the kernel never lets a tracer see (SIGKILL, SIGSTOP) or no signal (outside 1...64).
    case unusableSweepSignal(Int32)
    /// An `.addresses` region with no address in it, or a `.file` region with no path.
    case emptyRegion(Region)
    /// A negative `interval`.
    case negativeInterval(Duration)
    /// The program's output could not be captured: `call` failed with `errno`.
    case outputCapture(call: String, errno: Int32)

    public var description: String {
        switch self {
        case .noProgram: return "no program to run: arguments are empty"
        case .stackDepthOutOfRange(let n): return "stack depth \(n) is outside 0...256"
        case .unusableSweepSignal(let s):
            return "signal \(s) cannot be the sweep signal (the tracer never sees SIGKILL or SIGSTOP; 1...64)"
        case .emptyRegion(let r): return "region \(r) is empty"
        case .negativeInterval(let d): return "interval \(d) is negative"
        case let .outputCapture(call, errno): return "capturing the program's output: \(call) failed, errno \(errno)"
        }
    }
}

/// A program to run under PageWatch, and what to watch in it: the write
/// faults of its first write to each watched page, and the sweeps that
/// report the written pages phase by phase.
///
/// ```swift
/// let result = try WatchedProgram(["./my-fixture"], regions: [.addresses(0x7000_0000_0000..<0x7000_0001_0000)]).run()
/// #expect(result.pages(writtenBy: "f", inPhase: 2) == [0x7000_0000_5000])
/// ```
public struct WatchedProgram: Sendable {
    /// The program and its arguments; the program is searched in `PATH`.
    public var arguments: [String]
    /// What to watch; `[.writable]` by default.
    public var regions: [Region]
    /// Frames recorded for each writer, innermost first; 0 turns attribution
    /// off (write events then have no frames).
    public var stackDepth: Int
    /// Each delivery of this signal to the program makes a sweep and is
    /// swallowed: a fixture marks the end of its phases with `raise(SIGUSR2)`.
    /// nil: no signal sweeps.
    public var sweepSignal: Int32?
    /// Periodic sweeps as well; nil (the default) for none, so that the
    /// phases are exactly those the program marks.
    public var interval: Duration?
    /// Track the processes the program forks too, each with its own sweeps
    /// (events carry their `pid`); otherwise they run untracked.
    public var followForks: Bool
    /// The program's standard output goes to `WatchResult.output` (true),
    /// or to this process's (false). Standard input and error are this process's.
    public var capturesOutput: Bool

    public init(
        _ arguments: [String], regions: [Region] = [.writable], stackDepth: Int = 16,
        sweepSignal: Int32? = SIGUSR2, interval: Duration? = nil, followForks: Bool = false,
        capturesOutput: Bool = true
    ) {
        self.arguments = arguments
        self.regions = regions
        self.stackDepth = stackDepth
        self.sweepSignal = sweepSignal
        self.interval = interval
        self.followForks = followForks
        self.capturesOutput = capturesOutput
    }

    /// Runs the program to its end on the calling thread, handing every
    /// event to `onEvent` in the order it happened, and returns them all
    /// with how the program ended.
    ///
    /// A synchronous callback rather than an `AsyncSequence`: the kernel ties
    /// a traced program to the one thread that traces it, so the session
    /// cannot hop threads as async code does, and a callback on that thread
    /// needs no buffering, keeps the order, and runs while the writer is
    /// stopped at its write (it can look at the program then). Wrap `run` in
    /// a thread of your own to feed an `AsyncStream` if you want one.
    /// `onEvent` must not call `run` again on this thread.
    ///
    /// The program starts with no signal blocked (whatever this thread
    /// blocks) and this process's other dispositions. While it runs, this
    /// process ignores SIGINT and SIGQUIT (a Ctrl-C is the program's); they
    /// are given back when the last session of the process ends. Sessions on
    /// several threads may run at once.
    ///
    /// Throws `WatchError` for a configuration it refuses, and the engine's
    /// `TraceError` when the program cannot be started (`.execFailed`) or
    /// traced; a program that fails or crashes is no error: see `end`.
    public func run(onEvent: (WatchEvent) -> Void = { _ in }) throws -> WatchResult {
        var configuration = try trackerConfiguration()
        let capture = capturesOutput ? try OutputCapture() : nil
        defer { capture?.close() }
        configuration.standardOutput = capture?.descriptor ?? -1
        var events: [WatchEvent] = []
        var pid: Int32 = 0
        let end = try withoutActuallyEscaping(onEvent) { onEvent in
            let deliver = { (event: WatchEvent) in
                events.append(event)
                onEvent(event)
            }
            let tracker = Tracker(configuration: configuration) { record in
                if case .start(let started, _, _, _, _, _, _, _, _) = record { pid = started }
                if let event = WatchEvent(record) { deliver(event) }
            }
            tracker.writeObserver = { deliver(.write(WriteEvent($0))) }
            // Periodic sweeps leave the timer's SIGALRM blocked in this thread: give it its mask back.
            var mask = sigset_t()
            pthread_sigmask(SIG_SETMASK, nil, &mask)
            defer { pthread_sigmask(SIG_SETMASK, &mask, nil) }
            return try TerminalSignals.preserved { try tracker.run() }
        }
        return WatchResult(pid: pid, end: end, events: events, output: try capture?.contents())
    }

    /// The engine's configuration, after the checks the CLI makes of its options.
    func trackerConfiguration() throws -> TrackerConfiguration {
        guard !arguments.isEmpty else { throw WatchError.noProgram }
        guard (0...256).contains(stackDepth) else { throw WatchError.stackDepthOutOfRange(stackDepth) }
        if let s = sweepSignal, !(1...64).contains(s) || s == SIGKILL || s == SIGSTOP {
            throw WatchError.unusableSweepSignal(s)
        }
        for region in regions {
            switch region {
            case .addresses(let r) where r.isEmpty: throw WatchError.emptyRegion(region)
            case .file(let path) where path.isEmpty: throw WatchError.emptyRegion(region)
            default: break
            }
        }
        var intervalNs: UInt64 = 0
        if let interval {
            guard interval >= .zero else { throw WatchError.negativeInterval(interval) }
            let (seconds, attoseconds) = interval.components
            intervalNs = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        }
        var configuration = TrackerConfiguration(
            command: arguments, selection: Selection(regions.map(\.trackSpec)),
            intervalNs: intervalNs, sweepSignal: sweepSignal,
            followForks: followForks, stackDepth: stackDepth)
        configuration.emptySignalMask = true
        // Each page's first write in a phase is an event: none may be presumed.
        configuration.presume = .never
        configuration.newMemoryWaitsForTheSweep = false
        return configuration
    }
}
