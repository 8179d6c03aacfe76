/// Everything a `WatchedProgram` run saw, and the questions a test asks of it.
public struct WatchResult: Sendable {
    /// The program's process id.
    public var pid: Int32
    /// How the program ended (its `shellStatus` is what a shell would report).
    public var end: ProgramEnd
    /// Every event, in order, as `run` handed them to its callback.
    public var events: [WatchEvent]
    /// The program's standard output, when captured.
    public var output: String?

    /// Every write event, in order.
    public var writes: [WriteEvent] {
        events.compactMap { if case .write(let w) = $0 { return w } else { return nil } }
    }

    /// Every sweep, in order (with `followForks`, of every process).
    public var sweeps: [SweepEvent] {
        events.compactMap { if case .sweep(let s) = $0 { return s } else { return nil } }
    }

    /// The pages `writer` (a function name as `WriteEvent.writer` gives it,
    /// e.g. `fill_two` or `[kernel] read`) wrote first in `phase` of process
    /// `pid` (the program by default): "function f wrote page P in phase 2".
    /// Sorted addresses.
    public func pages(writtenBy writer: String, inPhase phase: Int, pid: Int32? = nil) -> [UInt64] {
        writes(inPhase: phase, pid: pid).filter { $0.writer == writer }.map(\.page).sorted()
    }

    /// The pages of `phase` whose writer's call stack has `function` in it:
    /// the storing function or any caller (`fill` that calls `memset`,
    /// whatever libc's memset is named on this CPU), or a function that made
    /// the call the kernel wrote for. Sorted, as `pages(writtenBy:)`.
    public func pages(writtenThrough function: String, inPhase phase: Int, pid: Int32? = nil) -> [UInt64] {
        writes(inPhase: phase, pid: pid).filter { w in w.frames.contains { $0.function == function } }.map(\.page)
            .sorted()
    }

    /// Who wrote each page first in `phase` of process `pid` (the program by
    /// default): page address → `WriteEvent.writer`.
    public func writers(inPhase phase: Int, pid: Int32? = nil) -> [UInt64: String] {
        Dictionary(
            writes(inPhase: phase, pid: pid).map { ($0.page, $0.writer) }, uniquingKeysWith: { first, _ in first })
    }

    /// The sweep `seq` of process `pid` (the program by default): the one
    /// that reports the writes of phase `seq`.
    public func sweep(_ seq: Int, pid: Int32? = nil) -> SweepEvent? {
        sweeps.first { $0.seq == seq && $0.pid == (pid ?? self.pid) }
    }

    func writes(inPhase phase: Int, pid: Int32?) -> [WriteEvent] {
        writes.filter { $0.phase == phase && $0.pid == (pid ?? self.pid) }
    }
}
