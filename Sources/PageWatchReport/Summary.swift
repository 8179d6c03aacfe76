import PageWatchAddressSpace
import PageWatchLog

/// The human summary printed to stderr when no `--output` is given.
public struct Summary {
    var pid: Int32 = 0
    var command: [String] = []
    var sweeps: [SweepRecord] = []
    var end: ProgramEnd?
    var execs = 0
    var untracked: [String] = []
    var attached = false, detached = false
    /// `--follow-forks`: the other processes, in the order they appeared.
    var followed: [(pid: Int32, parent: Int32, pages: UInt64, faults: Int, end: ProgramEnd?, name: String?)] = []

    public init() {}

    public mutating func add(_ record: LogRecord) {
        switch record {
        case let .start(p, _, c, _, _, _, _, _, _): pid = p; command = c
        case let .exec(p, path, command, _, _, _):
            if p == pid {
                execs += 1
            } else if let i = followed.firstIndex(where: { $0.pid == p }) {
                followed[i].name = ProcessNaming.name(command: command, path: path)
            }
        case .sweep(let s) where s.pid == pid: sweeps.append(s)
        case .sweep(let s):
            if let i = followed.firstIndex(where: { $0.pid == s.pid }) {
                followed[i].pages += s.dirtyPages
                followed[i].faults += s.faults
            }
        case let .fork(child, parent, _): followed.append((child, parent, 0, 0, nil, nil))
        case let .exit(child, e, _, _, _):
            if let i = followed.firstIndex(where: { $0.pid == child }) { followed[i].end = e }
        case .attach: attached = true
        case .detach: detached = true
        case let .untracked(p, reason, _): untracked.append("process \(p): tracking stopped: \(reason)")
        case .missed, .warning: break  // said on stderr as it was found
        case .end(_, let e, _, _, _): end = e
        }
    }

    public func render() -> String {
        var lines: [String] = []
        lines.append("pagewatch: \(attached ? "attached to " : "")pid \(pid) \(command.joined(separator: " "))")
        let mib = { (pages: UInt64) in String(format1(Double(pages * Page.size) / 1_048_576)) }
        lines.append("  sweep  reason    dirty pages       MiB   faults  ranges")
        // Beyond a screenful, the busiest sweeps only, in order (an hour at 1s is 3,600 rows).
        let shown = Self.rowsShown(sweeps)
        for s in sweeps where shown.contains(s.seq) {
            let reason = s.reason.rawValue + String(repeating: " ", count: max(0, 8 - s.reason.rawValue.count))
            let columns: [String] = [
                pad(String(s.seq), 5), "  ", reason, pad(String(s.dirtyPages), 13),
                pad(mib(s.dirtyPages), 10), pad(String(s.faults), 9), pad(String(s.ranges.count), 8),
            ]
            var notes: [String] = []
            if !s.rearmed { notes.append("not re-armed") }
            let presumed = s.presumed.reduce(UInt64(0)) { $0 + $1.pageCount }
            let reportedAgain = s.reportedAgain.reduce(UInt64(0)) { $0 + $1.pageCount }
            let again = reportedAgain - min(reportedAgain, presumed)
            if again > 0 { notes.append("\(again) again") }
            if presumed > 0 { notes.append("\(presumed) presumed") }
            let zero = s.zeroRanges.reduce(UInt64(0)) { $0 + $1.pageCount }
            let file = s.fileRanges.reduce(UInt64(0)) { $0 + $1.pageCount }
            if zero > 0 { notes.append("\(zero) zero") }
            if file > 0 { notes.append("\(file) file") }
            lines.append("  " + columns.joined() + (notes.isEmpty ? "" : "  (" + notes.joined(separator: ", ") + ")"))
        }
        if shown.count < sweeps.count {
            lines.append(
                "  ... \(sweeps.count - shown.count) quieter sweeps not shown: --output LOG, then pagewatch report LOG lists every one"
            )
        }
        // Pages reported again (the sweep before could not re-arm them) are
        // not counted twice: they were not seen written again.
        let again = sweeps.reduce(UInt64(0)) { $0 + $1.reportedAgain.reduce(0) { $0 + $1.pageCount } }
        let totalPages = sweeps.reduce(UInt64(0)) { $0 + $1.dirtyPages } - again
        let totalFaults = sweeps.reduce(0) { $0 + $1.faults }
        lines.append(
            "  total: \(sweeps.count) sweeps, \(totalPages) dirty pages (\(mib(totalPages)) MiB), \(totalFaults) write faults"
                + (again > 0 ? "; \(again) pages reported again, not counted" : ""))
        if let rate = Self.rate(sweeps) {
            lines.append(
                "  rate: \(format1(rate)) pages/s (\(format1(rate * Double(Page.size) / 1_048_576)) MiB/s) from sweep 1 to sweep \(sweeps.count); sweep 1 left out"
            )
        }
        lines += topWriters()
        if execs > 0 { lines.append("  the program called exec \(execs) time(s); tracking restarted each time") }
        for f in followed {
            lines.append(
                "  process \(f.pid)\(f.name.map { " " + $0 } ?? "") (forked by \(f.parent)): \(f.pages) dirty pages, "
                    + "\(f.faults) write faults, " + ended(f.end))
        }
        if !followed.isEmpty {
            let pages = totalPages + followed.reduce(UInt64(0)) { $0 + $1.pages }
            let faults = totalFaults + followed.reduce(0) { $0 + $1.faults }
            lines.append(
                "  all \(followed.count + 1) processes: \(pages) dirty pages (\(mib(pages)) MiB), \(faults) write faults"
            )
        }
        for u in untracked { lines.append("  " + u) }
        if let end { lines.append("  program " + ended(end)) }
        if detached { lines.append("  detached; the program runs on") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// At most this many sweep rows; beyond, the busiest of them.
    static let sweepRows = 20

    /// The seqs of the sweep rows shown: all of them up to `sweepRows`,
    /// else the busiest (by pages, then faults) and the last.
    static func rowsShown(_ sweeps: [SweepRecord]) -> Set<Int> {
        guard sweeps.count > sweepRows else { return Set(sweeps.map(\.seq)) }
        let busiest = sweeps.sorted { ($0.dirtyPages, $0.faults, -$0.seq) > ($1.dirtyPages, $1.faults, -$1.seq) }
        return Set(busiest.prefix(sweepRows - 1).map(\.seq)).union([sweeps.last!.seq])
    }

    /// Pages of sweeps 2...N over the time from sweep 1 to sweep N, as `report` computes it.
    static func rate(_ sweeps: [SweepRecord]) -> Double? {
        guard sweeps.count >= 2, let first = sweeps.first, let last = sweeps.last, last.timeNs > first.timeNs else {
            return nil
        }
        let pages = sweeps.dropFirst().reduce(UInt64(0)) {
            $0 + $1.dirtyPages - min($1.dirtyPages, $1.reportedAgain.reduce(0) { $0 + $1.pageCount })
        }
        return Double(pages) / (Double(last.timeNs - first.timeNs) / 1e9)
    }

    /// The program's five top writers over its sweeps (call stacks summed as `report` does).
    func topWriters() -> [String] {
        let writers = Writer.summed(sweeps.map { $0.sites ?? [] })
        let total = writers.reduce(UInt64(0)) { $0 + $1.pages }
        guard total > 0 else { return [] }
        var out = ["  top writers (of \(writers.count) call stacks):"]
        for w in writers.prefix(5) {
            let name = FrameNaming.writer(w.frames)
            let share = Double(w.pages) * 100 / Double(total)
            out.append(
                "  " + pad(String(w.pages), 10) + pad(format1(share) + "%", 8) + "  " + name.function
                    + (name.location.map { "  " + $0 } ?? ""))
        }
        return out
    }

    func ended(_ end: ProgramEnd?) -> String {
        switch end {
        case .exited(let c)?: return "exited with status \(c)"
        case .killed(let s)?: return "killed by \(SignalNames.name(s))"
        case nil: return "still running"
        }
    }

    func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }

    func format1(_ v: Double) -> String {
        let tenths = Int((v * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }
}

/// How reports name a process: its command's program name (`cc1`, `as`),
/// from the `exec` record that gave it its image.
public enum ProcessNaming {
    public static func name(command: [String], path: String) -> String? {
        let word = command.first ?? (path.isEmpty ? nil : path)
        return word.map { String($0.split(separator: "/").last ?? Substring($0)) }
    }
}
