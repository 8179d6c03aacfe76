import PageWatchAddressSpace
import PageWatchLog

/// One writer of a process over the whole log: the sites of every sweep
/// with the same call stack, summed. Same frames = same writer (ip, module,
/// names, lines; after an exec the addresses differ, and so do the writers).
public struct Writer: Sendable, Equatable {
    /// Innermost first, as in the log.
    public var frames: [Frame]
    public var pages: UInt64
    public var faults: Int
    /// Sweeps in which it wrote something.
    public var sweeps: Int
}

/// How frames are named in reports.
public enum FrameNaming {
    /// `[kernel] read`, `[unseen]`, `[pinned]`: a pseudo-frame has a name and no address.
    public static func isPseudo(_ f: Frame) -> Bool {
        f.ip == 0 && f.module == nil && f.function?.hasPrefix("[") == true
    }

    public static func isKernel(_ f: Frame) -> Bool { isPseudo(f) && f.function!.hasPrefix("[kernel] ") }

    /// The function, else `module+0xOFFSET` (the module's file name, not its
    /// path: a report column, not a lookup key), else `0xIP`.
    public static func name(_ f: Frame) -> String {
        if let function = f.function { return function }
        if let module = f.module, let offset = f.offset {
            return "\(module.split(separator: "/").last.map(String.init) ?? module)+0x\(String(offset, radix: 16))"
        }
        return "0x\(String(f.ip, radix: 16))"
    }

    /// `file:line`, or nil when DWARF had no line for it.
    public static func location(_ f: Frame) -> String? {
        guard let file = f.file else { return nil }
        return f.line.map { "\(file):\($0)" } ?? file
    }

    /// What a writer is called in a table: its innermost real frame, and for
    /// the kernel writing on a syscall's behalf `[kernel] read <- read`,
    /// the pseudo-frame then who made the call. Location: that real frame's.
    public static func writer(_ frames: [Frame]) -> (function: String, location: String?) {
        guard let first = frames.first else { return ("[no frames]", nil) }
        if isKernel(first) {
            guard frames.count > 1 else { return (name(first), nil) }
            return ("\(name(first)) <- \(name(frames[1]))", location(frames[1]))
        }
        return (name(first), location(first))
    }
}

/// What the report formats share: the sweeps and writers of one process.
extension LoggedProcess {
    /// The pages its sweeps reported, summed (a page reported twice counts twice).
    public var totalPages: UInt64 { sweeps.reduce(0) { $0 + $1.dirtyPages } }
    public var totalFaults: Int { sweeps.reduce(0) { $0 + $1.faults } }
}

public struct ProcessReport: Sendable {
    public var log: ParsedLog
    public var process: LoggedProcess

    public enum SelectionError: Error, CustomStringConvertible, Equatable {
        case noSuchProcess(pid: Int32, source: String, present: [Int32])
        public var description: String {
            switch self {
            case let .noSuchProcess(pid, source, present):
                return
                    "\(source) has no process \(pid) (processes: \(present.map(String.init).joined(separator: ", ")))"
            }
        }
    }

    /// `pid` nil: the program.
    public init(log: ParsedLog, pid: Int32? = nil) throws(SelectionError) {
        self.log = log
        guard let p = log.process(pid ?? log.pid) else {
            throw .noSuchProcess(pid: pid ?? log.pid, source: log.source, present: log.processes.map(\.pid))
        }
        process = p
    }

    public var sweeps: [LoggedSweep] { process.sweeps }
    public var totalPages: UInt64 { process.totalPages }
    /// Pages reported again (the previous sweep could not re-arm them): in `totalPages`, not in the rate.
    public var reportedAgainPages: UInt64 { sweeps.reduce(0) { $0 + $1.reportedAgainPages } }
    /// Of those, the pages presumption left writable (`--presume`).
    public var presumedPages: UInt64 { sweeps.reduce(0) { $0 + $1.presumedPages } }
    /// `pagewatch/2`: pages reported because their contents changed unseen
    /// that read as zeros, or hold their file's contents (not in `totalPages`).
    public var zeroPages: UInt64 { sweeps.reduce(0) { $0 + $1.zeroPages } }
    public var filePages: UInt64 { sweeps.reduce(0) { $0 + $1.filePages } }
    /// Sweeps that could re-arm nothing (`rearmed: false`).
    public var reportOnlySweeps: Int { sweeps.filter { !$0.rearmed }.count }
    public var totalFaults: Int { process.totalFaults }
    /// Whether the log has `sites` (not written with `--stack-depth 0`).
    public var hasSites: Bool { sweeps.contains { $0.sites != nil } }

    public func mib(_ pages: UInt64) -> Double { Double(pages) * Double(log.pageSize) / 1_048_576 }

    /// The sites of every sweep, aggregated by call stack (`Writer.summed`).
    public var writers: [Writer] { Writer.summed(sweeps.map { $0.sites ?? [] }) }
}

extension Writer {
    /// Sweeps' sites aggregated by call stack; most pages first, then most
    /// faults, then first seen first. For `report` and the end-of-run summary.
    static func summed(_ sweepsSites: [[WriteSite]]) -> [Writer] {
        var order: [[Frame]] = []
        var byStack: [[FrameKey]: Writer] = [:]
        for sites in sweepsSites {
            for site in sites {
                let key = site.frames.map(FrameKey.init)
                if byStack[key] == nil {
                    order.append(site.frames)
                    byStack[key] = Writer(frames: site.frames, pages: 0, faults: 0, sweeps: 0)
                }
                byStack[key]!.pages += site.pages
                byStack[key]!.faults += site.faults
                byStack[key]!.sweeps += 1
            }
        }
        let writers = order.map { byStack[$0.map(FrameKey.init)]! }
        return writers.enumerated().sorted { a, b in
            if a.element.pages != b.element.pages { return a.element.pages > b.element.pages }
            if a.element.faults != b.element.faults { return a.element.faults > b.element.faults }
            return a.offset < b.offset  // first seen first
        }.map(\.element)
    }
}

extension ProcessReport {
    /// Dirty pages over time, from the sweeps: the pages reported by sweeps
    /// 2...N divided by the time between sweep 1 and sweep N. Sweep 1 is
    /// left out because it reports everything tracked (tracking begins
    /// there, docs/format.md rule 6), not what was written in an interval.
    /// nil with fewer than two sweeps or no time between them. Pages
    /// reported again because a sweep could not re-arm them (format rule 9)
    /// are left out: they were reported already, and not seen written again.
    public var dirtyRate: (pagesPerSecond: Double, pages: UInt64, seconds: Double)? {
        guard sweeps.count >= 2, let first = sweeps.first, let last = sweeps.last, last.timeNs > first.timeNs else {
            return nil
        }
        let pages = sweeps.dropFirst().reduce(UInt64(0)) { $0 + $1.newPages }
        let seconds = Double(last.timeNs - first.timeNs) / 1e9
        return (Double(pages) / seconds, pages, seconds)
    }

    /// Each sweep's own rate: its pages over the time since the previous
    /// sweep (for sweep 1, since tracking of the process began).
    public func sweepRate(_ index: Int) -> Double? {
        let previous = index == 0 ? process.beginNs : sweeps[index - 1].timeNs
        let now = sweeps[index].timeNs
        guard now > previous else { return nil }
        return Double(sweeps[index].newPages) / (Double(now - previous) / 1e9)
    }

    /// Nanoseconds from the start record to the program's end (or the last
    /// record known), for the summary.
    public var durationNs: UInt64? {
        let last = process.ending?.timeNs ?? sweeps.last?.timeNs
        guard let last, last >= process.beginNs else { return nil }
        return last - process.beginNs
    }
}

/// Frame isn't Hashable (the engine has no need): the fields that identify it.
struct FrameKey: Hashable {
    var ip: UInt64, offset: UInt64?, line: Int?
    var function: String?, module: String?, file: String?

    init(_ f: Frame) {
        ip = f.ip; offset = f.offset; line = f.line
        function = f.function; module = f.module; file = f.file
    }
}

/// Number formatting shared by the text and HTML reports.
public enum Format {
    /// Fixed decimals without Foundation's locale-dependent String(format:).
    public static func fixed(_ v: Double, _ decimals: Int) -> String {
        guard v.isFinite else { return "-" }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = (abs(v) * scale).rounded()
        let whole = UInt64(scaled / scale)
        let frac = UInt64(scaled - Double(whole) * scale)
        let sign = v < 0 && scaled > 0 ? "-" : ""
        guard decimals > 0 else { return sign + String(whole) }
        let f = String(frac)
        return sign + String(whole) + "." + String(repeating: "0", count: decimals - f.count) + f
    }

    /// A duration in the unit that reads best.
    static func duration(ns: UInt64) -> String {
        let v = Double(ns)
        if v < 1e6 { return fixed(v / 1e3, 1) + " µs" }
        if v < 1e9 { return fixed(v / 1e6, 1) + " ms" }
        return fixed(v / 1e9, 3) + " s"
    }

    public static func padLeft(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
    }

    static func padRight(_ s: String, _ width: Int) -> String {
        s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
    }

    static func ending(_ e: LoggedEnding?) -> String {
        guard let e else { return "no end record: the log is incomplete" }
        if let s = e.signal { return "killed by \(SignalNames.name(s)) (status \(e.exitStatus))" }
        return "exited with status \(e.exitStatus)"
    }
}
