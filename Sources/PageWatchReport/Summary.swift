import PageWatchAddressSpace
import PageWatchEngine
import PageWatchPtrace

/// The human summary printed to stderr when no `--output` is given.
public struct Summary {
    var pid: Int32 = 0
    var command: [String] = []
    var sweeps: [SweepRecord] = []
    var end: ProgramEnd?
    var execs = 0

    public init() {}

    public mutating func add(_ record: LogRecord) {
        switch record {
        case let .start(p, _, c, _, _): pid = p; command = c
        case .exec: execs += 1
        case .sweep(let s): sweeps.append(s)
        case .end(_, let e, _, _, _): end = e
        }
    }

    public func render() -> String {
        var lines: [String] = []
        lines.append("pagewatch: pid \(pid) \(command.joined(separator: " "))")
        let mib = { (pages: UInt64) in String(format1(Double(pages * Page.size) / 1_048_576)) }
        lines.append("  sweep  reason    dirty pages       MiB   faults  ranges")
        for s in sweeps {
            let reason = s.reason.rawValue + String(repeating: " ", count: max(0, 8 - s.reason.rawValue.count))
            let columns: [String] = [pad(String(s.seq), 5), "  ", reason, pad(String(s.dirtyPages), 13),
                                     pad(mib(s.dirtyPages), 10), pad(String(s.faults), 9), pad(String(s.ranges.count), 8)]
            lines.append("  " + columns.joined())
        }
        let totalPages = sweeps.reduce(UInt64(0)) { $0 + $1.dirtyPages }
        let totalFaults = sweeps.reduce(0) { $0 + $1.faults }
        lines.append("  total: \(sweeps.count) sweeps, \(totalPages) dirty pages (\(mib(totalPages)) MiB), \(totalFaults) write faults")
        if execs > 0 { lines.append("  the program called exec \(execs) time(s); tracking restarted each time") }
        switch end {
        case .exited(let c)?: lines.append("  program exited with status \(c)")
        case .killed(let s)?: lines.append("  program killed by \(Signal.name(s))")
        case nil: break
        }
        return lines.joined(separator: "\n") + "\n"
    }

    func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }

    func format1(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}
